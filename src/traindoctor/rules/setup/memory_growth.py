"""TD505 memory-growth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

MIN_ALIVE = 8  # earlier steps' graphs alive at once
MIN_SHARE = 0.8  # of the earlier graphs observed, the share still alive
MIN_RISE = 3  # alive graphs must have risen by this much over the observed steps
# Memory alone (CUDA, where the allocator counter is exact): a rise at nearly every sample.
MIN_SAMPLES = 8
RISE_SHARE = 0.9
MIN_GROWTH_MB = 64.0


@rule(
    code="TD505",
    name="memory-growth",
    severity=Severity.WARNING,
    summary="Every step's autograd graph stays alive (e.g. `total += loss`): memory grows each step.",
    requires=("memory.graphs_alive", "memory.host_rss_mb", "memory.cuda_allocated_mb"),
    events=("graph_holder", "graph_retained"),
    facts=("memory",),
    priority=60,
)
def memory_growth(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Autograd graphs of earlier steps that are still alive steps later, more of them every
    step: a running total (`total_loss += loss`), a list of losses or outputs with their
    graph, a backward on a running total. Names the line that keeps the graph (the
    accumulation) when it can be found, else the backward line, and says whether the
    backward itself runs through the earlier steps' graphs.

    ## Why it matters
    A loss tensor carries its whole graph. Adding it to a total that lives across steps keeps
    every step's graph (its nodes, and with `retain_graph=True` its activations) alive:
    memory grows each step until the run slows down or dies of out-of-memory, hours in.
    When the backward runs on the total, each step also back-propagates all earlier losses
    again: the gradients are wrong as well.

    ## How it is measured
    On the first 32 steps and the sampled steps after, the root node of each backward gets a
    marker in its `metadata` dict; traindoctor keeps only a weak reference to it, so the
    marker dies exactly when the node does. At each observed backward it counts the markers
    of steps before the previous one that are still alive (one step's graph held by a
    `prev_loss` variable is normal) and those already freed. It fires when, at some observed
    step, at least 8 earlier graphs are alive at once, they are at least 80% of those
    observed by then, and their number rose to it; it reports the observation with the most
    alive. A total reset at each epoch (`train_loss = 0` before the epoch's loop) frees the
    pile at once: that still fires (memory grows over every epoch) and the step at which
    the graphs were freed is reported. Then, once: a walk of the backward's graph for earlier markers
    (does the backward run through them?) and a `TorchFunctionMode`, from one backward to
    the next, that finds the torch call taking the loss and returning a tensor with a graph
    (the accumulation line). Process RSS (psutil, else /proc/self/statm, else the peak RSS
    from `resource`) and `torch.cuda.memory_allocated()` are reported next to it. Without
    live graphs, CUDA allocated memory rising at 90% of at least 8 samples by 64 MiB or
    more is reported on its own (CPU RSS is too noisy to judge alone).

    ## Example
    ```python
    total_loss = 0
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        total_loss += loss              # keeps this step's graph alive
    ```

    ## Fix
    ```python
        total_loss += loss.item()       # or loss.detach(): a number, no graph
    ```

    ## Known false positives
    Keeping graphs on purpose across many steps (a custom second-order method, truncated
    BPTT with a window longer than 8 steps that is freed later); growth that stops at a
    plateau later in the run (a bounded cache of outputs).
    """
    series = [(s, v) for s, v in tl.series("memory.graphs_alive") if isinstance(v, dict)]
    graph = _graph_finding(tl, series)
    if graph is not None:
        yield graph
        return
    cuda = _cuda_finding(tl)
    if cuda is not None:
        yield cuda


def _graph_finding(tl: TimelineView, series: list[tuple[int, dict[str, Any]]]) -> Finding | None:
    if not series:
        return None
    peak = _peak(series)
    if peak is None:
        return None
    last_step, last = series[peak]
    alive, dead = int(last.get("alive") or 0), int(last.get("dead") or 0)
    # A total reset at each epoch's start (`train_loss = 0`) frees the pile at once: memory
    # still grows over every epoch. Said when the graphs were seen freed after the peak.
    freed_at = series[peak + 1][0] if peak + 1 < len(series) else None
    first = next((s for s, v in series if int(v.get("alive") or 0) > 0), last_step)
    holder = next(iter(tl.events("graph_holder")), None)
    walk = next(iter(tl.events("graph_retained")), None)
    reaches = list((walk or {}).get("backward_reaches") or [])
    backward_at = (walk or {}).get("backward_source")
    source = (holder or {}).get("source") or backward_at
    memory = _memory_evidence(tl)
    evidence: dict[str, Any] = {
        "graphs_alive": alive,
        "graphs_freed": dead,
        "oldest_alive_step": last.get("oldest"),
        "observed_until_step": last_step,
        "markers_capped": bool(last.get("capped")),
        "freed_later_at_step": freed_at,
        "accumulation_line": (holder or {}).get("source"),
        "accumulation_code": (holder or {}).get("code"),
        "accumulation_op": (holder or {}).get("op"),
        "backward_line": backward_at,
        "backward_reaches_earlier_steps": reaches,
        **memory,
    }
    line = f" at {holder['source']}" if holder and holder.get("source") else ""
    code = f" (`{holder['code']}`)" if holder and holder.get("code") else ""
    mem = _memory_words(memory)
    if freed_at is not None:
        mem += (
            f"; they were freed together by step {freed_at} (the holder is reset, e.g. each "
            "epoch), so memory grows over every such period"
        )
    if reaches:
        cause = (
            f"the backward{_at(backward_at)} runs through the graphs of earlier steps "
            f"(it reached the roots of steps {', '.join(map(str, reaches[:5]))}): each step "
            "back-propagates the earlier losses again, so the gradients are wrong and memory "
            "grows"
        )
        severity = Severity.ERROR
    else:
        cause = (
            f"a tensor that lives across steps keeps each step's loss with its graph{line}{code}"
            if holder
            else "a reference that lives across steps (a running total, a list of losses or "
            "outputs) keeps each step's graph"
        )
        severity = Severity.WARNING
    return tl.finding(
        title=f"The autograd graphs of {alive} earlier steps are still alive at step "
        f"{last_step}{line}",
        step=first,
        evidence=evidence,
        where=Where(op=(holder or {}).get("op"), source=source),
        cause=f"measured: at step {last_step}, {alive} of the {alive + dead} earlier steps' "
        f"graphs observed were still alive (oldest from step {last.get('oldest')}); {cause}"
        f"{mem}.",
        fix="accumulate a number, not the graph: `total += loss.item()` (or `loss.detach()`); "
        "keep tensors for logging only after `.detach()`"
        + ("; call backward on each step's loss, not on the running total" if reaches else ""),
        confidence=0.9 if holder else 0.75,
        severity=severity,
    )


def _peak(series: list[tuple[int, dict[str, Any]]]) -> int | None:
    """Index of the observation with the most earlier graphs alive among those that qualify,
    or None. One qualifies when enough graphs are alive, most of those observed by then, their
    number rose to it, and they stay alive: it is the last observation, or the next one finds
    them freed together (at most half left: a total reset at an epoch's start). A bounded
    window of kept losses (a deque of the last 10) frees one per step and never drops by half."""
    best = None
    low = None  # fewest alive so far
    for i, (_, v) in enumerate(series):
        alive, dead = int(v.get("alive") or 0), int(v.get("dead") or 0)
        rose = bool(v.get("capped")) or (low is not None and low <= alive - MIN_RISE)
        low = alive if low is None else min(low, alive)
        if alive < MIN_ALIVE or alive < MIN_SHARE * (alive + dead) or not rose:
            continue
        if i + 1 < len(series) and int(series[i + 1][1].get("alive") or 0) > alive // 2:
            continue  # still held at the next observation: judged there
        if best is None or alive >= int(series[best][1].get("alive") or 0):
            best = i
    return best


def _cuda_finding(tl: TimelineView) -> Finding | None:
    samples = [(s, v) for s, v in tl.series("memory.cuda_allocated_mb") if s > 3]
    if len(samples) < MIN_SAMPLES:
        return None
    rises = sum(b[1] > a[1] for a, b in zip(samples, samples[1:]))
    growth = samples[-1][1] - samples[0][1]
    if rises < RISE_SHARE * (len(samples) - 1) or growth < MIN_GROWTH_MB:
        return None
    return tl.finding(
        title=f"CUDA memory grows every step: +{growth:.0f} MiB from step {samples[0][0]} to "
        f"{samples[-1][0]}",
        step=samples[0][0],
        evidence={
            "cuda_allocated_mb": [
                [s, round(v, 1)] for s, v in samples[:: max(1, len(samples) // 20)]
            ],
            "rises": rises,
            "samples": len(samples),
            "growth_mb": round(growth, 1),
            **_memory_evidence(tl),
        },
        cause=f"torch.cuda.memory_allocated() rose at {rises} of {len(samples) - 1} sampled "
        f"steps, by {growth:.0f} MiB in all, while no earlier step's loss graph was found "
        "alive: tensors kept across steps (outputs or activations appended to a list, a "
        "cache that is never cleared)",
        fix="find the tensors kept across steps and store `.detach().cpu()` copies or numbers "
        "instead; clear caches each epoch",
        confidence=0.5,
    )


def _memory_evidence(tl: TimelineView) -> dict[str, Any]:
    out: dict[str, Any] = {"host_measure": (tl.fact("memory") or {}).get("host_measure")}
    for name, key in (
        ("memory.host_rss_mb", "host_rss_mb"),
        ("memory.cuda_allocated_mb", "cuda_mb"),
    ):
        series = tl.series(name)
        if series:
            (s0, v0), (s1, v1) = series[0], series[-1]
            out[key] = {"first": [s0, round(v0, 1)], "last": [s1, round(v1, 1)]}
    return out


def _memory_words(memory: dict[str, Any]) -> str:
    parts = []
    for key, what in (("cuda_mb", "CUDA allocated"), ("host_rss_mb", "process RSS")):
        m = memory.get(key)
        if m:
            parts.append(
                f"{what} {m['first'][1]:.1f} MiB at step {m['first'][0]} -> {m['last'][1]:.1f} "
                f"MiB at step {m['last'][0]}"
            )
    return f" ({'; '.join(parts)})" if parts else ""


def _at(source: str | None) -> str:
    return f" at {source}" if source else ""

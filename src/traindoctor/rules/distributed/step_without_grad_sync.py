"""TD606 step-without-grad-sync."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

MAX_STEPS_LISTED = 20


@rule(
    code="TD606",
    name="step-without-grad-sync",
    severity=Severity.ERROR,
    summary="Optimizer steps applied gradients DDP did not all-reduce (the last micro-batch "
    "inside no_sync()), and the replicas drifted.",
    requires=("job.sync", "job.param_fp", "job.ranks", "job.ddp"),
    priority=3,
)
def step_without_grad_sync(
    tl: TimelineView, *, rel_tol: float = 1e-5, min_accumulation_steps: int = 3
) -> Iterator[Finding]:
    """
    ## What it detects
    Gradient accumulation with `DistributedDataParallel.no_sync()` turned the wrong way: the
    optimizer steps on gradients the ranks did not exchange, because the forward of the last
    backward before the step ran while DDP's `require_backward_grad_sync` was False (what
    that backward added, and everything accumulated since the last all-reduce, stays local to
    each rank). DDP decides at
    the *forward* whether the following backward all-reduces, so the usual slips are an
    inverted condition (`no_sync()` on the step's micro-batch and not on the others), the
    optimizer step inside the `with model.no_sync():` block, and
    `model.require_backward_grad_sync = last_micro_step` set after the forward instead of
    before it. Real reports: modelscope/FunASR#3472
    (https://github.com/modelscope/FunASR/pull/3472: `batch_idx % accum_grad` synchronized
    the first micro-batch and left the optimizer-step micro-batch inside no_sync, "leaving
    rank-local accumulated gradients"), karpathy/build-nanogpt#30
    (https://github.com/karpathy/build-nanogpt/pull/30: the flag set before the backward only,
    the loss clearly worse with accumulation). The reverse, accumulation without no_sync
    (every micro-batch all-reduced), is correct and only costs communication: reported as
    info (https://github.com/huggingface/accelerate/pull/1153 measured up to 2x per batch).

    ## Why it matters
    Each rank applies its own local gradient: the replicas stop being replicas after the first
    such step, DDP then averages gradients computed at different weights, and the checkpoint
    rank 0 saves is one rank's model trained on one shard. Nothing fails and each rank's loss
    still goes down.

    ## How it is measured
    Each rank's ranks probe reads, at every training forward through the DDP wrapper (a
    forward pre-hook on the wrapper, where DDP itself reads it), whether
    `require_backward_grad_sync` is set, and counts the step's backward passes; a step whose
    last backward followed a forward without it is recorded with the user's line of that
    forward. The merge lines the ranks up. Reported as an error when such steps exist and the
    replicas' parameter fingerprints (TD601's, steps 1-4, powers of two, every 100th) differ
    across ranks beyond `rel_tol` at a fingerprint step after the first of them: the
    replicas drifted. When they still agree (the script averages gradients by hand after the
    backward), nothing is reported. With no such step, a job whose steps each ran two or more
    synchronized forwards, each with its backward, through its one DDP wrapper, on at least
    `min_accumulation_steps` (3) steps on every rank, is reported as info: accumulation
    without no_sync.

    ## Example
    ```python
    for i, (x, y) in enumerate(loader):
        last = (i + 1) % accum == 0
        ctx = model.no_sync() if last else contextlib.nullcontext()   # inverted
        with ctx:
            (F.cross_entropy(model(x), y) / accum).backward()
        if last:
            optimizer.step(); optimizer.zero_grad()
    ```

    ## Fix
    ```python
    for i, (x, y) in enumerate(loader):
        last = (i + 1) % accum == 0
        ctx = contextlib.nullcontext() if last else model.no_sync()   # sync the last one
        with ctx:                                   # forward AND backward inside
            (F.cross_entropy(model(x), y) / accum).backward()
        if last:
            optimizer.step(); optimizer.zero_grad()
    ```

    ## Known false positives
    A model whose replicas are meant to differ (local SGD without DDP's own hooks, per-rank
    experts) and that steps inside no_sync() is reported; declare such parameters to DDP
    (`_ddp_params_and_buffers_to_ignore`) or train them outside the wrapper.
    """
    ranks = sorted(int(r) for r in (tl.at("job.ranks", 0) or {}))
    if len(ranks) < 2:
        return
    rows = tl.series("job.sync")
    unsynced = _unsynced_steps(rows)
    if unsynced:
        first = min(s for steps in unsynced.values() for s, _ in steps)
        drift = _first_drift(tl.series("job.param_fp"), first, rel_tol)
        if drift is not None:
            yield _error(tl, unsynced, first, drift, ranks)
        return
    found = _accumulation_without_no_sync(tl, rows, ranks, min_accumulation_steps)
    if found is not None:
        yield found


def _unsynced_steps(rows: list[tuple[int, Any]]) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """rank -> [(step, its record)] of the steps whose last backward followed a forward that
    did not synchronize: the gradients accumulated since the last all-reduce stay local."""
    out: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for step, by_rank in rows:
        for r, v in (by_rank or {}).items():
            if isinstance(v, dict) and v.get("last") is False:
                out.setdefault(int(r), []).append((step, v))
    return out


def _first_drift(
    rows: list[tuple[int, Any]], since: int, rel_tol: float
) -> tuple[int, str, float, list[int]] | None:
    """(step, tensor, relative difference, ranks that differ from the lowest) at the first
    fingerprint step from `since` on where the replicas' parameters differ; None if none."""
    for step, by_rank in rows:
        if step < since or not isinstance(by_rank, dict) or len(by_rank) < 2:
            continue
        names = sorted(by_rank, key=int)
        ref = by_rank[names[0]] or {}
        worst: tuple[str, float] | None = None
        odd = []
        for r in names[1:]:
            other = by_rank[r] or {}
            for key, a in ref.items():
                b = other.get(key)
                rel = _rel(a, b)
                if rel is not None and rel > rel_tol:
                    if worst is None or rel > worst[1]:
                        worst = (key.rsplit("#", 1)[0], rel)
                    if int(r) not in odd:
                        odd.append(int(r))
        if worst is not None:
            return step, worst[0], worst[1], odd
    return None


def _rel(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or a == b:
        return None
    if math.isnan(a) or math.isnan(b):
        return None
    scale = max(abs(a), abs(b))
    if not math.isfinite(scale):
        return math.inf
    return abs(a - b) / scale if scale > 0 else None


def _error(
    tl: TimelineView,
    unsynced: dict[int, list[tuple[int, dict[str, Any]]]],
    first: int,
    drift: tuple[int, str, float, list[int]],
    ranks: list[int],
) -> Finding:
    lowest = min(unsynced)
    rows = unsynced[lowest]
    source = next((v.get("source") for _, v in rows if v.get("source")), None)
    count = {str(r): len(v) for r, v in sorted(unsynced.items())}
    drift_step, tensor, rel, odd = drift
    forwards = sum(int(v.get("unsynced") or 0) for _, v in rows)
    return tl.finding(
        title=(
            f"{len(rows)} optimizer step(s) from step {first} applied gradients DDP had not "
            f"all-reduced: the forward of the step's last backward ran inside no_sync() "
            f"(require_backward_grad_sync=False) on rank(s) {', '.join(map(str, unsynced))}; "
            f"the replicas' parameters differ from step {drift_step} ({tensor})"
        ),
        step=first,
        evidence={
            "ranks": sorted(set(ranks)),
            "unsynced_steps": count,
            "steps": [s for s, _ in rows][:MAX_STEPS_LISTED],
            "unsynced_forwards": forwards,
            "drift_step": drift_step,
            "drift_tensor": tensor,
            "drift_rel": round(rel, 6) if math.isfinite(rel) else rel,
            "differing_ranks": odd,
        },
        where=Where(op="DistributedDataParallel.no_sync", source=source),
        cause=(
            "DDP decides at each forward whether the next backward all-reduces; the last "
            "micro-batch before these optimizer steps ran with require_backward_grad_sync=False "
            "(inside no_sync(), or the flag set after the forward), so the gradients "
            "accumulated since the last all-reduce stayed local and each rank stepped on its "
            "own: the replicas drifted apart"
        ),
        fix=(
            "run only the micro-batches before the last one inside model.no_sync() (forward and "
            "backward both), and the last micro-batch's forward and backward outside it, then "
            "optimizer.step()"
        ),
        confidence=0.9,
    )


def _accumulation_without_no_sync(
    tl: TimelineView, rows: list[tuple[int, Any]], ranks: list[int], min_steps: int
) -> Finding | None:
    ddp = tl.at("job.ddp", 0) or {}
    one_wrapper = all(
        isinstance(ddp.get(str(r)), dict)
        and sum(1 for w in ddp[str(r)].values() if isinstance(w, dict) and w.get("kind") == "ddp")
        == 1
        for r in ranks
    )
    if not one_wrapper:
        return None  # several wrappers (a GAN, actor-critic): several synced forwards by design
    steps: dict[int, list[tuple[int, int]]] = {}
    for step, by_rank in rows:
        for r, v in (by_rank or {}).items():
            if not isinstance(v, dict):
                continue
            synced, backwards = int(v.get("synced") or 0), int(v.get("backwards") or 0)
            if synced >= 2 and backwards == synced and not v.get("unsynced"):
                steps.setdefault(int(r), []).append((step, synced))
    if set(steps) != set(ranks) or min(len(v) for v in steps.values()) < min_steps:
        return None
    rows0 = steps[min(steps)]
    per_step = sorted({n for _, n in rows0})
    return tl.finding(
        title=(
            f"Gradient accumulation without no_sync(): {len(rows0)} step(s) ran "
            f"{'/'.join(map(str, per_step))} synchronized forward+backward passes each, so "
            f"DDP all-reduced the gradients {per_step[-1]} times per optimizer step"
        ),
        step=rows0[0][0],
        evidence={
            "ranks": ranks,
            "steps": [s for s, _ in rows0][:MAX_STEPS_LISTED],
            "synced_backwards_per_step": per_step,
        },
        where=Where(op="DistributedDataParallel.no_sync"),
        cause=(
            "every micro-batch's backward all-reduced the gradients; only the last one before "
            "optimizer.step() needs to (correct, but the communication is paid once per "
            "micro-batch)"
        ),
        fix=(
            "wrap the forward and backward of every micro-batch but the last in "
            "`with model.no_sync():` (Accelerate: accelerator.accumulate(model))"
        ),
        severity=Severity.INFO,
        confidence=0.7,
    )

"""TD601 rank-desync."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import common_module

PARAMS = "job.param_fp"
BUFFERS = "job.buffer_fp"
MAX_NAMED = 8


@rule(
    code="TD601",
    name="rank-desync",
    severity=Severity.ERROR,
    summary="DDP replicas hold different parameters (or buffers) at the same step.",
    requires=("job.param_fp", "job.buffer_fp", "job.ddp", "job.bypass", "job.ranks"),
    priority=4,
)
def rank_desync(
    tl: TimelineView, *, rel_tol: float = 1e-5, min_steps: int = 2
) -> Iterator[Finding]:
    """
    ## What it detects
    The replicas of a `DistributedDataParallel` model stop being replicas: at the same step,
    some rank's parameters differ from the others' (or, with `broadcast_buffers=False`, its
    floating-point buffers such as BatchNorm running statistics do). Typical causes: a forward
    and backward that bypass the DDP wrapper on some steps (`model.module(x)`: that step's
    gradients are never all-reduced), a parameter registered after the model was wrapped (DDP
    neither broadcasts it nor reduces its gradient), `broadcast_buffers=False` with BatchNorm
    (each rank keeps its own running statistics, and the checkpoint saved by rank 0 holds only
    its shard's). Real reports: k2-fsa/icefall#226
    (https://github.com/k2-fsa/icefall/issues/226, `model.module.forward2(x)` called outside the
    DDP wrapper), pytorch/pytorch#128949 (https://github.com/pytorch/pytorch/issues/128949,
    parameters out of sync across ranks, silently).

    ## Why it matters
    Data parallelism is only correct while every rank holds the same model: past the first
    desynchronized step, each rank trains its own model on its shard and DDP averages
    gradients computed at different points. Nothing fails: the loss still goes down on each
    rank, the saved checkpoint is one rank's model, and evaluation differs by rank.

    ## How it is measured
    Each rank fingerprints the DDP-wrapped module at the first training forward of steps
    1-4, the powers of two and every 100th step (the same steps on every rank: a function of
    the step number alone): one L2 and one L1 norm per parameter tensor and per floating-point
    buffer, two fused `torch._foreach_norm` calls accumulated in float32 (no collective: each
    rank records its own, and the merge compares them after the job). Buffers are taken after
    DDP's own broadcast, so with `broadcast_buffers=True` they match too. A model deeper
    inside the wrapper (Lightning's LightningModule) is fingerprinted when the step opens.
    In healthy DDP the replicas are bit-identical: every rank receives the same bits of the
    all-reduced gradient (each element is reduced once and copied to every rank, as in ring
    and tree all-reduce) and applies the same element-wise optimizer step, and the
    fingerprints are computed by the same kernels on the same shapes. `rel_tol` (1e-5) only
    absorbs a different reduction order of the fingerprint itself on dissimilar hardware
    (about log2(n)·2^-24 relative for a float32 norm of n elements, well under 1e-6 for any
    tensor that fits a GPU), while a single unsynchronized update moves a norm by about
    lr·|g|/|θ|, orders of magnitude more. A parameter differing beyond that on at least
    `min_steps` fingerprint steps is a desync; buffers alone are judged only when the wrapper
    was built with `broadcast_buffers=False` (with the default, a validation forward can skip
    one broadcast, a legitimate difference). Parameters DDP was told to ignore are not compared.
    The cause comes from what each rank recorded: forwards of the wrapped module that did not
    go through the wrapper (counted by a hook, with the line), parameters DDP does not hold.

    ## Example
    ```python
    model = DDP(net)
    for step, (x, y) in enumerate(loader):
        out = model.module(x) if step % 2 else model(x)   # every other step bypasses DDP
        F.cross_entropy(out, y).backward()
        opt.step(); opt.zero_grad()
    ```

    ## Fix
    ```python
    model = DDP(net)              # register every parameter before wrapping
    for x, y in loader:
        out = model(x)            # always through the wrapper (or all-reduce gradients yourself)
        F.cross_entropy(out, y).backward()
        opt.step(); opt.zero_grad()
    ```

    ## Known false positives
    A model whose replicas are meant to differ (per-rank experts, parameters deliberately kept
    local) without declaring them to DDP (`_ddp_params_and_buffers_to_ignore`) is reported.
    """
    ddp = tl.at("job.ddp", 0) or {}
    ranks_read = sorted(int(r) for r in (tl.at("job.ranks", 0) or {}))
    bypass = _bypass(tl)
    ignored = _ignored(ddp)
    params = _desync(tl.series(PARAMS), rel_tol, ignored)
    if len(params) >= min_steps:
        yield _finding(tl, "parameters", params, ddp, bypass, ranks_read)
        return
    no_broadcast = [r for r, wrappers in ddp.items() if _no_broadcast(wrappers)]
    if not no_broadcast:
        return
    buffers = _desync(tl.series(BUFFERS), rel_tol, ignored)
    if len(buffers) >= min_steps:
        yield _finding(tl, "buffers", buffers, ddp, bypass, ranks_read)


def _no_broadcast(wrappers: Any) -> bool:
    return isinstance(wrappers, dict) and any(
        isinstance(w, dict) and w.get("broadcast_buffers") is False for w in wrappers.values()
    )


def _ignored(ddp: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for wrappers in ddp.values():
        for w in (wrappers or {}).values() if isinstance(wrappers, dict) else ():
            if isinstance(w, dict):
                out.update(str(n) for n in w.get("ignored") or ())
    return out


def _bypass(tl: TimelineView) -> dict[int, dict[str, Any]]:
    """rank -> {first step, steps, forwards, source} of forwards that bypassed the wrapper."""
    out: dict[int, dict[str, Any]] = {}
    for step, by_rank in tl.series("job.bypass"):
        for r, v in (by_rank or {}).items():
            if not isinstance(v, dict):
                continue
            b = out.setdefault(int(r), {"first": step, "steps": 0, "forwards": 0})
            b["steps"] += 1
            b["forwards"] += int(v.get("count") or 0)
            b.setdefault("source", v.get("source"))
    return out


def _differs(a: Any, b: Any, rel_tol: float) -> float | None:
    """The relative difference of two fingerprint values when beyond `rel_tol`, else None."""
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return None
    if math.isnan(a) and math.isnan(b):
        return None
    if a == b:
        return None
    scale = max(abs(a), abs(b))
    if not math.isfinite(scale):
        return math.inf
    rel = abs(a - b) / scale if scale > 0 else 0.0
    return rel if rel > rel_tol else None


def _desync(
    rows: list[tuple[int, Any]], rel_tol: float, ignored: set[str]
) -> list[tuple[int, dict[str, float], list[int]]]:
    """[(step, {tensor: largest relative difference}, ranks that differ from the lowest)] of
    the fingerprint steps where some tensor differs across ranks."""
    out = []
    for step, by_rank in rows:
        if not isinstance(by_rank, dict) or len(by_rank) < 2:
            continue
        ranks = sorted(by_rank, key=int)
        ref = by_rank[ranks[0]] or {}
        diffs: dict[str, float] = {}
        odd: set[int] = set()
        for r in ranks[1:]:
            other = by_rank[r] or {}
            for key, a in ref.items():
                name = key.rsplit("#", 1)[0]
                if name in ignored or key not in other:
                    continue
                rel = _differs(a, other[key], rel_tol)
                if rel is not None:
                    diffs[name] = max(diffs.get(name, 0.0), rel)
                    odd.add(int(r))
        if diffs:
            out.append((step, diffs, sorted(odd)))
    return out


def _finding(
    tl: TimelineView,
    kind: str,
    rows: list[tuple[int, dict[str, float], list[int]]],
    ddp: dict[str, Any],
    bypass: dict[int, dict[str, Any]],
    ranks_read: list[int],
) -> Finding:
    first_step, first_diffs, _ = rows[0]
    last_step, last_diffs, odd = rows[-1]
    names = sorted(last_diffs, key=lambda n: -last_diffs[n])
    all_odd = sorted({r for _, _, o in rows for r in o})
    in_sync = [s for s, by_rank in tl.series(PARAMS if kind == "parameters" else BUFFERS)]
    in_sync = [s for s in in_sync if s < first_step]
    unsynced = sorted(
        {
            str(n)
            for wrappers in ddp.values()
            if isinstance(wrappers, dict)
            for w in wrappers.values()
            if isinstance(w, dict)
            for n in w.get("unsynced") or ()
        }
    )
    late = [n for n in names if n in unsynced]
    shown = ranks_read or sorted({0, *all_odd})
    severity = None
    if bypass:
        r, b = min(bypass.items())
        where_src = b.get("source")
        cause = (
            f"the wrapped module was called directly, not through DDP ({b['forwards']} training "
            f"forward(s) on {b['steps']} step(s) from step {b['first']} on rank {r}"
            + (f", at {where_src}" if where_src else "")
            + "): DDP all-reduces only the gradients of forwards that go through its wrapper, "
            "so each rank applied its own gradients on those steps"
        )
        fix = "call the DDP-wrapped model (model(x)), never model.module(x), in training"
    elif late:
        where_src = None
        cause = (
            f"{len(late)} parameter(s) ({', '.join(late[:MAX_NAMED])}) are not among those "
            "DDP synchronizes: registered after the model was wrapped, DDP neither broadcast "
            "them at construction nor all-reduces their gradients"
        )
        fix = "create every parameter before wrapping the model in DDP (or wrap it again)"
    elif kind == "buffers":
        where_src = None
        cause = (
            "DDP was built with broadcast_buffers=False: each rank keeps the running "
            "statistics of its own shard, so the replicas' buffers drift apart and rank 0's "
            "checkpoint and evaluations use rank 0's statistics only"
        )
        fix = (
            "keep broadcast_buffers=True (the default), or convert BatchNorm with "
            "nn.SyncBatchNorm.convert_sync_batchnorm(model) before wrapping"
        )
        severity = Severity.WARNING
    else:
        where_src = None
        cause = (
            "the replicas were updated differently: an update outside DDP's gradient "
            "all-reduce (a forward/backward that bypasses the wrapper, an optimizer step after "
            "a micro-batch inside no_sync() (TD606), a rank-specific optimizer or learning "
            "rate, an in-place write to the weights on some ranks)"
        )
        fix = (
            "update the model only through the DDP wrapper's forward/backward and the same "
            "optimizer on every rank"
        )
    module = common_module(names)  # None when the tensors span several modules
    title = (
        f"DDP replicas' {kind} differ across ranks from step {first_step}"
        + (f" (in sync at step {in_sync[-1]})" if in_sync else "")
        + f": {len(last_diffs)} tensor(s) at step {last_step} differ on rank(s) "
        f"{', '.join(map(str, odd))} from rank {min(shown)}"
    )
    return tl.finding(
        title=title,
        step=first_step,
        evidence={
            "ranks": shown,
            "differing_ranks": all_odd,
            "kind": kind,
            "first_step": first_step,
            "last_in_sync_step": in_sync[-1] if in_sync else None,
            "steps_differing": [s for s, _, _ in rows][:20],
            "tensors": {n: round(last_diffs[n], 6) for n in names[:MAX_NAMED]},
            "tensors_differing": len(last_diffs),
            "first_tensors": sorted(first_diffs)[:MAX_NAMED],
            "bypass": {str(r): b for r, b in sorted(bypass.items())},
            "unsynced_params": unsynced[:MAX_NAMED],
            "broadcast_buffers": {
                str(r): [w.get("broadcast_buffers") for w in ws.values() if isinstance(w, dict)]
                for r, ws in sorted(ddp.items())
                if isinstance(ws, dict)
            },
        },
        where=Where(module=module, params=tuple(names[:MAX_NAMED]), source=where_src),
        cause=cause,
        fix=fix,
        severity=severity,
    )

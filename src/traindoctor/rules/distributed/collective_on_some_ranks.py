"""TD608 collective-on-some-ranks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

CLEAN_ENDS = ("normal", "max_steps")


@rule(
    code="TD608",
    name="collective-on-some-ranks",
    severity=Severity.ERROR,
    summary="A torch.distributed collective called by some ranks only: the ranks' collectives "
    "diverge there and the job hangs or fails.",
    requires=("job.collectives", "job.ranks"),
    priority=1,
)
def collective_on_some_ranks(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A collective (`dist.all_reduce`, `dist.barrier`, `dist.broadcast`, an object collective)
    that some ranks of the job called and others did not, at the same point of training: an
    evaluation or a metric average run under `if rank == 0:`, a barrier inside a branch only
    one rank takes, a collective after a loop that runs a different number of steps per rank.
    Every rank must call the same collectives in the same order; the rank that calls one alone
    waits for the others until the process group's timeout (30 minutes by default) and then
    fails, or the collective is paired with a different one on the other ranks. Real reports:
    huggingface/transformers-bloom-inference#40
    (https://github.com/huggingface/transformers-bloom-inference/pull/40: "rank 0 calls
    `dist.barrier()` while other processes don't. Cause deadlock forever"),
    cfzd/Ultra-Fast-Lane-Detection-v2#119
    (https://github.com/cfzd/Ultra-Fast-Lane-Detection-v2/issues/119: DDP training stuck at
    "Evaluating the results..." then "Watchdog caught collective operation timeout ...
    OpType=ALLREDUCE"), horovod/horovod#159 (https://github.com/horovod/horovod/issues/159:
    validation on rank 0, "only subset of ranks is submitting tensors, which will cause
    deadlock").

    ## Why it matters
    The job hangs, usually for the whole collective timeout, and the error finally printed
    (a watchdog timeout on some rank, in some all_reduce) names neither the rank that went its
    own way nor the line; on several nodes the whole allocation idles meanwhile.

    ## How it is measured
    While a rank is watched, `torch.distributed.distributed_c10d._get_default_group`, which
    torch's collectives call on the job's whole group before they run, passes through a
    listening wrapper (nothing is added to the process group, and the script's own call to
    `dist.all_reduce` is untouched): each collective on the whole group is counted per
    training step, the first ones of each step with the user's line, before it runs, so a rank
    that then hangs in it has it recorded (collectives on a subgroup are left out: ranks
    outside it rightly skip them). The merge compares the ranks' counts step by step, with
    each rank taken at the steps it reached: every step it closed, and the step after its last
    when it ended cleanly, or when it ended in the very collective it recorded there (a rank
    that crashed elsewhere is not compared past its last step), and only at steps some rank
    completed (ranks all stopped inside one step, by a Ctrl-C, have partial counts). The first step where the
    counts differ names the ranks that called more, their first extra collective and its line.
    Reported only when the job did not end cleanly on every rank (a rank raised, was killed
    or never closed): that is what a divergence does.

    ## Example
    ```python
    for epoch in range(epochs):
        train_one_epoch(model, loader)
        if dist.get_rank() == 0:
            acc = evaluate(model, val_loader)
            dist.all_reduce(acc)        # only rank 0 is here: waits for the others forever
    ```

    ## Fix
    ```python
    for epoch in range(epochs):
        train_one_epoch(model, loader)
        acc = evaluate(model, val_loader_shard)   # every rank evaluates its shard
        dist.all_reduce(acc)                      # and every rank joins the collective
        if dist.get_rank() == 0:
            print(acc / dist.get_world_size())
    ```

    ## Known false positives
    None known. Collectives DDP runs in C++ (its gradient all-reduce, its buffer broadcast)
    and collectives given an explicit group (a subgroup, or `group.WORLD` for most of them)
    are not counted: a hang in one of those is missed.
    """
    info = tl.at("job.ranks", 0) or {}
    ranks = sorted(int(r) for r in info)
    if len(ranks) < 2:
        return
    outcomes = {r: _outcome(info.get(str(r))) for r in ranks}
    unclean = {r: o for r, o in outcomes.items() if o.get("ended") not in CLEAN_ENDS}
    if not unclean:
        return
    rows = {step: by_rank or {} for step, by_rank in tl.series("job.collectives")}
    for step in sorted(rows):
        counts: dict[int, dict[str, Any]] = {}
        for r in ranks:
            rec = rows[step].get(str(r))
            if _reached(info.get(str(r)) or {}, outcomes[r], step, rec):
                counts[r] = rec if isinstance(rec, dict) else {"n": 0, "calls": []}
        if len(counts) < 2 or not any(
            _complete(info.get(str(r)) or {}, outcomes[r], step) for r in counts
        ):
            continue  # only ranks stopped inside the step (a Ctrl-C): partial counts
        ns = {r: int(c.get("n") or 0) for r, c in counts.items()}
        low, high = min(ns.values()), max(ns.values())
        if low == high:
            continue
        extra = sorted(r for r, n in ns.items() if n == high)
        others = sorted(r for r, n in ns.items() if n < high)
        calls = counts[extra[0]].get("calls") or []
        op, source = (calls[low] if low < len(calls) else [None, None])[:2]
        yield _finding(tl, step, extra, others, ns, op, source, unclean)
        return


def _outcome(rank_info: Any) -> dict[str, Any]:
    if not isinstance(rank_info, dict):
        return {"ended": "missing"}
    out = rank_info.get("outcome")
    if isinstance(out, dict):
        return out
    return {"ended": "killed" if rank_info.get("ended") is False else "unknown"}


def _complete(rank_info: dict[str, Any], outcome: dict[str, Any], step: int) -> bool:
    """Whether this rank did all of `step`'s collectives: it closed the step, or it was in it
    when it ended cleanly."""
    last = rank_info.get("last_step")
    if not isinstance(last, int):
        return False
    return last >= step or (last == step - 1 and outcome.get("ended") in CLEAN_ENDS)


def _reached(rank_info: dict[str, Any], outcome: dict[str, Any], step: int, rec: Any) -> bool:
    """Whether this rank's collectives at `step` are comparable: it closed that step, or it
    was in it when it ended cleanly, or it ended in the last collective it recorded there."""
    last = rank_info.get("last_step")
    if not isinstance(last, int):
        return False
    if last >= step:
        return True
    if last != step - 1:
        return False
    if outcome.get("ended") in CLEAN_ENDS:
        return True
    if not isinstance(rec, dict) or not rec.get("calls"):
        return False
    where = outcome.get("source")
    if outcome.get("ended") == "exception":
        return bool(where) and rec["calls"][-1][1] == where
    return True  # killed or never closed, with a collective recorded in its last step


def _finding(
    tl: TimelineView,
    step: int,
    extra: list[int],
    others: list[int],
    ns: dict[int, int],
    op: Any,
    source: Any,
    unclean: dict[int, dict[str, Any]],
) -> Finding:
    called = f"dist.{op}" if op else "a collective"
    ended = "; ".join(
        f"rank {r} {o.get('ended')}"
        + (f" ({str(o.get('exception'))[:160]})" if o.get("exception") else "")
        for r, o in sorted(unclean.items())
    )
    return tl.finding(
        title=(
            f"Rank(s) {', '.join(map(str, extra))} called {called}"
            + (f" at {source}" if source else "")
            + f" after step {max(0, step - 1)}, which rank(s) {', '.join(map(str, others))} "
            f"never called: the job's collectives diverge there ({ended})"
        ),
        step=max(0, step - 1),
        evidence={
            "after_step": max(0, step - 1),
            "ranks": sorted([*extra, *others]),
            "called_by": extra,
            "not_called_by": others,
            "collective": op,
            "collectives_in_step": {str(r): n for r, n in sorted(ns.items())},
            "ended": {
                str(r): {k: o[k] for k in ("ended", "exception", "source", "step") if k in o}
                for r, o in sorted(unclean.items())
            },
        },
        where=Where(op=f"torch.distributed.{op}" if op else None, source=source or None),
        cause=(
            f"{called} runs on rank(s) {', '.join(map(str, extra))} only (a branch on the rank, "
            "or a loop of a different length per rank): a collective completes only when every "
            "rank of the group calls it, so the caller waits until the group's timeout, or it "
            "is paired with another collective of the other ranks"
        ),
        fix=(
            "call the collective on every rank (evaluate each rank's shard, all-reduce, then "
            "print on rank 0), or move the rank-0-only work after every collective of the step; "
            "init_process_group(timeout=...) shorter while debugging"
        ),
        confidence=0.9,
    )

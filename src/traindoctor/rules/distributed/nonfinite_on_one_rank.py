"""TD602 nonfinite-on-one-rank."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

MAX_SAMPLES = 8


@rule(
    code="TD602",
    name="nonfinite-on-one-rank",
    severity=Severity.ERROR,
    summary="A NaN/Inf loss appeared on one rank first and the gradient all-reduce spread it.",
    requires=("job.loss", "job.nonfinite", "job.data_fp", "job.data_samples", "job.ranks"),
    priority=3,
)
def nonfinite_on_one_rank(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    In a data-parallel job, the loss of some rank(s) became NaN or Inf at a step where the
    other ranks' losses were still finite, and the other ranks' gradients or losses became
    non-finite at that step or later: the non-finite value came from the first rank's batch
    and DDP's gradient all-reduce carried it to every replica. The finding names the rank,
    the step and what its batch held (a non-finite input value, and which samples of the
    batch, when the data probe fingerprinted them). Real report: ecmwf/WeatherGenerator#2718
    (https://github.com/ecmwf/WeatherGenerator/pull/2718: "a NaN or spike on ranks 1..N-1
    with a finite rank-0 loss ... its gradients poisoned the all-reduce").

    ## Why it matters
    Every rank's report then shows a NaN loss, and the rank that logs (rank 0, usually) shows
    it one step late, with a finite batch: the search for the cause starts on the wrong rank
    and the wrong batch. One bad record on one shard is enough to turn the whole job NaN.

    ## How it is measured
    Each rank records its own losses every step (the backward roots) and the steps where its
    loss or gradients were non-finite (the numerics probe); the merge lines the ranks up by
    step (job timeline). The first step with a non-finite value on any rank is the onset; the
    ranks whose loss was non-finite there are its origin, provided some rank's loss was
    finite there and became (or its gradients became) non-finite at or after it. The batch is
    described from the origin rank's data fingerprint of that step (a non-finite min/max or
    sum of an input) and its per-sample fingerprints (first 32 steps).

    ## Example
    ```python
    for x, y in loader:                      # rank 1's shard holds a record with a NaN feature
        loss = F.mse_loss(model(x), y)       # NaN on rank 1 only
        loss.backward()                      # DDP all-reduce: every rank's gradient is NaN
        opt.step(); opt.zero_grad()
    ```

    ## Fix
    ```python
    x = torch.nan_to_num(x)                  # or drop/clean the bad records of that shard
    loss = F.mse_loss(model(x), y)
    if not torch.isfinite(loss):             # or skip the step on every rank (an all-reduced flag)
        raise FloatingPointError(f"rank {dist.get_rank()}: non-finite loss")
    ```

    ## Known false positives
    None known: the ranks' own losses are compared step by step; when every rank turns
    non-finite at the same step (a shared cause: the learning rate, the model) nothing is said.
    """
    ranks = sorted(int(r) for r in (tl.at("job.ranks", 0) or {}))
    if len(ranks) < 2:
        return
    loss_bad: dict[int, int] = {}  # rank -> first step with a non-finite loss
    loss_ok: dict[int, set[int]] = {}  # rank -> steps with a finite loss recorded
    for step, by_rank in tl.series("job.loss"):
        for r, values in (by_rank or {}).items():
            vals = [v for v in (values or []) if isinstance(v, int | float)]
            if not vals:
                continue
            if all(math.isfinite(v) for v in vals):
                loss_ok.setdefault(int(r), set()).add(step)
            else:
                loss_bad.setdefault(int(r), step)
    any_bad: dict[int, int] = dict(loss_bad)
    kinds: dict[tuple[int, int], list[str]] = {}  # (rank, step) -> what was non-finite
    for step, by_rank in tl.series("job.nonfinite"):
        for r, what in (by_rank or {}).items():
            rank = int(r)
            if isinstance(what, list):
                kinds[(rank, step)] = [str(w) for w in what]
                if "loss" in what:
                    loss_bad[rank] = min(loss_bad.get(rank, step), step)
            any_bad[rank] = min(any_bad.get(rank, step), step)
    if not loss_bad:
        return
    onset = min(any_bad.values())
    origin = sorted(r for r, s in loss_bad.items() if s == onset)
    clean = [r for r in ranks if r not in origin and onset in loss_ok.get(r, set())]
    if not origin or not clean:
        return
    spread = {r: any_bad[r] for r in clean if r in any_bad}
    if not spread:
        return  # the others stayed finite: the per-rank TD201 says it, on its rank
    rank = origin[0]
    batch = _batch(tl, onset, rank)
    held = batch.get("nonfinite_inputs")
    samples = batch.get("nonfinite_samples")
    if held:
        what = f"its batch's input {', '.join(held)} held NaN/Inf" + (
            f" (sample(s) {samples} of the batch)" if samples else ""
        )
    elif batch.get("fingerprinted"):
        what = "its batch's inputs were finite: the loss, its targets or the model made it"
    else:
        what = "its batch was not fingerprinted at that step"
    others = ", ".join(
        f"rank {r}'s {' and '.join(kinds.get((r, s)) or ['loss'])} at step {s}"
        for r, s in sorted(spread.items())
    )
    yield tl.finding(
        title=(
            f"The loss became non-finite on rank {', '.join(map(str, origin))} first, at step "
            f"{onset} ({what}); the gradient all-reduce spread it: {others}"
        ),
        step=onset,
        evidence={
            "ranks": sorted({*origin, *spread}),
            "origin_ranks": origin,
            "onset_step": onset,
            "first_nonfinite": {str(r): s for r, s in sorted(any_bad.items())},
            "finite_at_onset": clean,
            "batch": batch,
        },
        where=Where(op="loss"),
        cause=(
            f"rank {rank}'s batch at step {onset} produced a non-finite loss while the other "
            "ranks' were finite; DDP averages every rank's gradients, so one NaN gradient makes "
            "every replica's update NaN"
        ),
        fix=(
            f"inspect the batch rank {rank} drew at step {onset} (its shard of the data set); "
            "clean or filter the bad records, or check the loss's inputs for NaN/Inf and skip the "
            "step on every rank together"
        ),
    )


def _batch(tl: TimelineView, step: int, rank: int) -> dict[str, Any]:
    """What the origin rank's batch held at `step`, from its data fingerprints."""
    out: dict[str, Any] = {"rank": rank, "step": step}
    fp = (tl.at("job.data_fp", step) or {}).get(str(rank))
    if isinstance(fp, dict):
        bad = sorted(
            {
                k.rsplit(".", 1)[0]
                for k, v in fp.items()
                if isinstance(v, int | float) and not math.isfinite(v)
            }
        )
        out["fingerprinted"] = True
        out["nonfinite_inputs"] = bad
    samples = (tl.at("job.data_samples", step) or {}).get(str(rank))
    if isinstance(samples, list):
        idx = [
            i for i, v in enumerate(samples) if isinstance(v, int | float) and not math.isfinite(v)
        ]
        out["nonfinite_samples"] = idx[:MAX_SAMPLES]
    return out

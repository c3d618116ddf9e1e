"""TD609 validation-metric-not-synced."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

# Relative difference beyond which two ranks' values are not one all-reduced value: an
# all-reduce (or a metric computed on gathered data) gives every rank the same number, at most
# float32 rounding apart when ranks reduce in another order; per-shard values differ by far more.
REL_TOL = 1e-5
# Names that say a value is a rank's own by nature (its time, speed, memory, rank, the lr or
# the epoch counter): differing across ranks says nothing about the validation data.
_OWN_TOKENS = frozenset(
    ("time", "runtime", "duration", "sec", "secs", "second", "seconds", "throughput", "speed")
    + ("mem", "memory", "gpu", "rank", "lr", "epoch", "step", "it")
)


@rule(
    code="TD609",
    name="validation-metric-not-synced",
    severity=Severity.WARNING,
    summary="A validation metric differs across ranks at the same validation: each rank logs "
    "its own shard's value, not the whole validation set's.",
    requires=("job.val", "job.ranks"),
    priority=40,
)
def validation_metric_not_synced(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    In a multi-rank job, a validation loss or metric logged on two or more ranks (`doc.log`
    inside `doc.validating()`, Lightning's `self.log` in `validation_step` /
    `on_validation_epoch_end`, the Hugging Face Trainer's `evaluate` metrics) whose values
    differ across ranks at every validation where they were logged. Real reports:
    Lightning-AI/litgpt#599 (https://github.com/Lightning-AI/litgpt/issues/599: "what gets
    logged / printed is actually only the val_loss on the data shard of the first process"),
    cybertronai/transformer-xl#14 (https://github.com/cybertronai/transformer-xl/issues/14:
    the best validation loss kept on the master machine only), pyannote/pyannote-audio#591
    (https://github.com/pyannote/pyannote-audio/issues/591: "validation_epoch_end only sees its
    share of the output"), Lightning-AI/pytorch-lightning#4702
    (https://github.com/Lightning-AI/pytorch-lightning/issues/4702); Lightning itself warns
    "It is recommended to use `self.log(..., sync_dist=True)` when logging on epoch level in
    distributed setting to accumulate the metric across devices".

    ## Why it matters
    With a DistributedSampler each rank validates 1/world_size of the validation set. A value
    that is all-reduced (or computed on gathered predictions, or logged with `sync_dist=True`)
    is the same on every rank; a value that differs is each rank's own shard's. What rank 0
    prints, logs to the tracker, and uses to pick the best checkpoint or to stop early is then
    measured on a fraction of the data, is noisier, and changes with the number of GPUs.

    ## How it is measured
    Each rank records what it logged inside each validation; the merge lines the ranks up by
    validation step (`job.val`), one value per name per rank per validation (a name logged
    several times in one validation, per batch, is not judged). A name is reported when it was
    logged by at least two ranks at one or more common validations and, at every one of them,
    the ranks' values differ by more than a relative 1e-5 (far beyond float rounding).
    Training losses are per rank by design and are never read; nor are values whose name says
    they are a rank's own (time, speed, memory, rank, lr, epoch, step). A value logged on rank
    0 only cannot be compared: silent.

    ## Example
    ```python
    with doc.validating():
        val_loss = sum(F.cross_entropy(model(x), y) for x, y in val_loader) / len(val_loader)
        doc.log(loss=val_loss)             # this rank's shard only
    # Lightning: self.log("val_loss", loss)   (sync_dist=False by default)
    ```

    ## Fix
    ```python
    total = torch.tensor([loss_sum, n], dtype=torch.float64)
    dist.all_reduce(total)                  # the whole validation set's sum and count
    val_loss = (total[0] / total[1]).item()
    # Lightning: self.log("val_loss", loss, sync_dist=True), or a torchmetrics Metric
    # (synced across processes at compute()); or evaluate on rank 0 over the whole set.
    ```

    ## Known false positives
    Ranks that validate different data sets on purpose (one validation set per rank, each
    reported separately under the same name) are reported; so are ranks that each estimate the
    validation loss on their own random sample of the whole set on purpose (litgpt's
    approximation): rank 0's logged value is then still its own sample's.
    """
    ranks = sorted((tl.at("job.ranks", 0) or {}), key=int)
    if len(ranks) < 2:
        return
    # name -> [(step, {rank: value})] at validations where >= 2 ranks logged it
    seen: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for step, by_rank in tl.series("job.val"):
        per_name: dict[str, dict[str, float]] = {}
        for r, values in (by_rank or {}).items():
            if not isinstance(values, dict):
                continue
            for name, v in values.items():
                if _own(name):
                    continue
                if isinstance(v, int | float) and math.isfinite(v):
                    per_name.setdefault(name, {})[r] = float(v)
        for name, vals in per_name.items():
            if len(vals) >= 2:
                seen.setdefault(name, []).append((step, vals))
    differing = {
        name: rows for name, rows in seen.items() if rows and all(_differ(v) for _, v in rows)
    }
    if not differing:
        return
    # The validation loss first, then the metrics by name: one finding for the job.
    names = sorted(differing, key=lambda n: (n != "loss", n))
    name = names[0]
    step, values = differing[name][0]
    label = "the validation loss" if name == "loss" else f"validation metric `{name}`"
    shown = ", ".join(f"rank {r}: {values[r]:.6g}" for r in sorted(values, key=int))
    named = sorted({int(r) for n in names for _, v in differing[n] for r in v})
    evidence: dict[str, Any] = {
        "ranks": named,
        "metric": name,
        "metrics": names,
        "first_step": step,
        "values": {r: values[r] for r in sorted(values, key=int)},
        "validations": len(differing[name]),
        "max_relative_difference": max(_spread(v) for _, v in differing[name]),
        "world_size_read": len(ranks),
    }
    more = f" (and {len(names) - 1} more: {', '.join(names[1:4])})" if len(names) > 1 else ""
    yield tl.finding(
        title=(
            f"{label[0].upper()}{label[1:]} differs across ranks at all "
            f"{len(differing[name])} validation(s) seen on several ranks ({shown} at step "
            f"{step}){more}: each rank logs its own shard's value"
        ),
        step=step,
        evidence=evidence,
        where=Where(op="validation"),
        cause=(
            "the value is computed on each rank's share of the validation set and never "
            "all-reduced, so what rank 0 prints, logs and uses to select checkpoints is "
            f"measured on about 1/{len(ranks)} of the validation data"
        ),
        fix=(
            "all-reduce the sums and counts before dividing (dist.all_reduce), log with "
            "self.log(..., sync_dist=True) in Lightning, use a torchmetrics Metric (synced at "
            "compute()), or evaluate on rank 0 over the whole validation set"
        ),
    )


def _own(name: str) -> bool:
    return bool(_OWN_TOKENS & set(re.split(r"[^a-z0-9]+", name.lower())))


def _spread(values: dict[str, float]) -> float:
    lo, hi = min(values.values()), max(values.values())
    scale = max(abs(lo), abs(hi))
    return 0.0 if scale == 0 else (hi - lo) / scale


def _differ(values: dict[str, float]) -> bool:
    return _spread(values) > REL_TOL

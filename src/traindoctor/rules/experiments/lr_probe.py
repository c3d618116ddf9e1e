"""TD706 lr-probe."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._experiments import cost, experiment, run_lr

# The run's own loss stalled: its last fifth's median at least this share of its first fifth's.
STALLED = 0.95
# "The lr can fit one batch, look at the data" needs a run long enough to have stalled (TD108's
# 50 steps); `check`'s 20 steps are too few to say a healthy run did not learn.
MIN_RUN_STEPS = 50


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        nums = [v for v in (_scalar(x) for x in value) if v is not None]
        return statistics.fmean(nums) if nums else None
    return None


def run_loss(tl: TimelineView) -> tuple[list[float], str] | None:
    """The run's per-step loss (doc.log's, else the backward roots'), and where it came from."""
    for name in ("loss.train", "loss.backward"):
        values = [v for v in (_scalar(x) for _, x in tl.series(name)) if v is not None]
        if values:
            return values, name
    return None


def _stalled(values: list[float]) -> bool:
    """The run's loss did not fall: non-finite at some step, or its last fifth's median at
    least 95% of its first fifth's (a short `check` run: the first and last thirds)."""
    if any(not math.isfinite(v) for v in values):
        return True
    if len(values) < 6:
        return False
    part = max(2, len(values) // 5)
    start, end = statistics.median(values[:part]), statistics.median(values[-part:])
    return start > 0 and end >= STALLED * start


def _curve(values: list[Any]) -> str:
    nums = [float(v) if isinstance(v, int | float) else math.nan for v in values]
    bad = next((i for i, v in enumerate(nums) if not math.isfinite(v)), None)
    if not nums:
        return "no value"
    if bad is not None:
        return f"{nums[0]:.4g} -> {'nan' if math.isnan(nums[bad]) else nums[bad]} at step {bad}"
    return f"{nums[0]:.4g} -> {nums[-1]:.4g} in {len(nums) - 1} steps"


@rule(
    code="TD706",
    name="lr-probe",
    severity=Severity.INFO,
    summary="Whether the learning rate is the cause: the loss on one captured batch at lr x0.1, "
    "x1 and x10 on a copy (lower when x0.1 blows up too), worded as a conclusion.",
    requires=("loss.train", "loss.backward", "optim.lr"),
    events=("experiment",),
    priority=13,
)
def lr_probe(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Whether the learning rate is what keeps the model from learning, measured instead of
    guessed. The overfit-one-batch runs of TD702 (K = 50 steps of the user's optimizer class
    and settings on one captured batch, on a copy, at lr x1, then x10 and x0.1 until one fits,
    x100 and x1000 when nothing moved) are read side by side; when the loss blows up at x1 and
    at x0.1 alike, the same runs at x0.01 and x0.001 are added. Concluded:

    - **the lr is too high**: at the script's lr the loss blows up and stays up (non-finite, or
      above its start at the end) or keeps more than half of its start, while a smaller lr fits
      the batch (or, where the script's blew up, falls at least half-way without blowing up);
    - **the lr is too low**: at the script's lr the loss keeps more than 90% of its start while
      a larger lr fits the batch (not said when the run's lr later rose above 3x the captured
      one: a warmup starts near 0);
    - **the lr is not the cause**: no lr fits one batch and none blew up (TD702 "cannot fit"):
      the model or the loss is broken, tuning the lr will not help;
    - **the lr can fit one batch** (said only when the run's own loss, over 50 steps or more,
      stalled or went non-finite): the script's lr fits the batch, so the stall is more likely
      the data.

    Said only of a run whose own loss did not fall (its last fifth's median at least 95% of
    its first fifth's) or went non-finite: the question is asked of a run that does not learn.
    Nothing is said when the probe cannot tell (every lr only partly fits).

    ## Why it matters
    "Lower the learning rate" is the first thing tried on a stuck or diverging run, and often
    the wrong one: when no lr fits one batch the bug is in the loss or the model, and days go
    into tuning. When the lr is the cause, the probe says by how much to change it.

    ## How it is measured
    Under `traindoctor check` (or `TRAINDOCTOR_EXPERIMENTS=1`), at close, on deep copies from
    the initial weights inside `torch.random.fork_rng` (the user's run untouched). "Fits": the
    loss above its floor falls to 10% of its start in 50 steps; "blows up": non-finite, or above
    1.5x its start. The run's own loss (start and end) is quoted beside it. Cost: nothing beyond
    TD702's runs, except 50-100 steps at x0.01/x0.001 when x0.1 blows up too.

    ## Example
    ```python
    optimizer = torch.optim.SGD(model.parameters(), lr=3.0)   # the loss jumps, then NaN
    # TD706: lr x0.1: 2.30 -> 0.01 in 50 steps; lr x1: 2.30 -> nan at step 4: the lr is the cause
    loss = F.mse_loss(model(x), y)     # (B, 1) against (B,): no lr fits: not the lr
    ```

    ## Fix
    The conclusion says which way: the lr scaled by the factor that fitted, or the loss and the
    model's output path (TD702, TD508) when no lr fits.
    ```python
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    ```

    ## Known false positives
    One batch is not the dataset: an lr that fits one batch can still be too high for noisy
    mini-batches over a long run (a schedule with warmup helps there); and a model with strong
    regularization may fit one batch at no lr in 50 steps (then TD702 says "partly").
    """
    e = experiment(tl, "lr_probe")
    if e is None or e.get("verdict") not in (
        "too_high",
        "too_low",
        "not_the_lr",
        "fits_as_written",
    ):
        return
    verdict = e["verdict"]
    facts = e.get("facts") or {}
    curves = e.get("curves") or {}
    lr = [v for v in facts.get("lr") or [] if v is not None]
    lr_text = ", ".join(f"{v:g}" for v in lr) or "?"
    opt = facts.get("optimizer") or "the optimizer"
    better = facts.get("better_lr_scale")
    k = facts.get("k")
    mine = curves.get("lr x1")
    run = run_loss(tl)
    stalled = run is not None and _stalled(run[0])
    if not stalled:
        # The question is asked of a run that does not learn: on a run whose loss falls, one
        # batch blowing up at the lr (Adadelta at lr 1 on pytorch/examples' siamese network,
        # depending on the batch drawn) is TD702's "lr too high" at info, not "the cause".
        return
    if verdict == "fits_as_written" and len(run[0]) < MIN_RUN_STEPS:
        return  # TD702 already says the batch fits; nothing to conclude about the lr
    if verdict == "too_low" and run_lr(tl) > 3 * max(lr, default=math.inf):
        return  # the captured lr was a warmup's start: the run's own lr is higher already
    here = f"at the script's lr ({opt}, lr {lr_text}) {_curve(mine)}" if mine else ""
    if verdict == "too_high":
        other = curves.get(f"lr x{better:g}") or []
        title = (
            f"The lr is the cause (too high): on one batch, at lr x{better:g} the loss falls "
            f"{_curve(other)} while {here}"
        )
        cause = (
            "the learning rate is too high for this model: a smaller one fits the same batch "
            "where the script's does not"
        )
        fix = f"lower the lr about {1 / better:g}x (to {', '.join(f'{v * better:g}' for v in lr)})"
    elif verdict == "too_low":
        other = curves.get(f"lr x{better:g}") or []
        title = (
            f"The lr is the cause (too low): on one batch, at lr x{better:g} the loss falls "
            f"{_curve(other)} while {here}"
        )
        cause = (
            "the learning rate is too low: a larger one fits the batch the script's barely moves"
        )
        fix = f"raise the lr about {better:g}x (to {', '.join(f'{v * better:g}' for v in lr)})"
    elif verdict == "not_the_lr":
        grid = "; ".join(f"{label}: {_curve(v)}" for label, v in curves.items())
        title = f"The lr is not the cause: no lr fits one batch ({opt}, lr {lr_text}; {grid})"
        cause = (
            "the loss on one fixed batch does not fall at any lr: the model or the loss is "
            "broken (see TD702 and the loss findings), not the learning rate"
        )
        fix = "look at the loss call and the model's output path (shapes, detach, clamps) before the lr"
    else:
        title = (
            f"The lr can fit one batch: {here}; the run's own loss did not fall, so look at the "
            "data (labels, batches, what changes between steps) before the lr"
        )
        cause = "the script's lr fits one fixed batch: it is neither far too high nor far too low"
        fix = "check the labels and the batches the run trains on (TD504, TD511, TD512)"
    if run is not None:
        title += f" (the run's own loss: {_curve(run[0])})"
    yield tl.finding(
        title=title,
        step=e.get("step"),
        evidence={
            "verdict": verdict,
            "curves": curves,
            "k": k,
            **{
                key: facts[key]
                for key in ("ratios", "blew_up", "fits", "better_lr_scale", "lr")
                if key in facts
            },
            "run_stalled": stalled,
            "cost": cost(e) if e.get("steps") else "no step beyond TD702's runs",
        },
        where=Where(source=e.get("source")),
        cause=cause,
        fix=fix,
    )

"""TD701 loss-at-init-off."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._experiments import experiment


@rule(
    code="TD701",
    name="loss-at-init-off",
    severity=Severity.INFO,
    summary="The loss of the initial weights on a captured batch, against its expected value "
    "(cross-entropy: ln C), measured on a copy.",
    events=("experiment",),
    priority=60,
)
def loss_at_init_off(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    The first check of Karpathy's recipe: the loss at initialization. For `cross_entropy` /
    `nll_loss` with class-index targets over C classes, a freshly initialized classifier
    predicts about uniformly, so its loss is about ln C (2.303 for 10 classes). It is reported
    for every checked run (what was measured, against what), and says so when the measured
    value is off: more than 3x ln C (and 1 above it: confident wrong predictions at init, a
    final layer initialized too large, logits scaled up) or under a third of it (the labels
    leak into the input, or the loss is not what it seems).

    ## Why it matters
    A loss far above ln C means the first hundreds of steps are spent undoing the
    initialization ("hockey stick" loss curves) and the logits can saturate; far below means
    the task is trivially solved or the loss is computed on something else.

    ## How it is measured
    Under `traindoctor check` (or `TRAINDOCTOR_EXPERIMENTS=1`), at close: the captured batch
    (the first standard loss call on the model's output) is replayed on a deep copy of the
    model loaded with the weights it had when traindoctor attached, in train mode, without
    gradient, inside `torch.random.fork_rng`. The user's run is not touched. Other losses are
    reported as measured (MSE: with the target's variance and mean square beside it).

    ## Example
    ```python
    head = nn.Linear(64, 10)
    nn.init.normal_(head.weight, std=10.0)   # TD701: 38.2 at init, expected ln 10 = 2.30
    ```

    ## Fix
    ```python
    nn.init.zeros_(head.bias); nn.init.normal_(head.weight, std=0.01)  # small last layer
    ```

    ## Known false positives
    Class weights or label smoothing change the value a little; a model initialized from a
    pretrained checkpoint is not at chance and may legitimately be lower.
    """
    e = experiment(tl, "init_loss")
    if e is None or e.get("verdict") == "error":
        return
    facts = e.get("facts") or {}
    measured = facts.get("measured")
    expected = facts.get("expected")
    verdict = e.get("verdict")
    if expected is not None:
        words = {
            "ok": "as expected",
            "too_high": "too high",
            "too_low": "too low",
            "nonfinite": "not finite",
        }.get(str(verdict), str(verdict))
        c = facts.get("classes")
        chance = (
            f"ln {c} = {expected:.4g}"
            if abs(expected - facts.get("per_example_expected", expected)) < 1e-3
            else f"{expected:.4g} (ln {c} per example, as the loss call reduces)"
        )
        title = (
            f"Loss at initialization {measured:.4g} ({words}): expected {chance} for {c} classes"
        )
    else:
        title = f"Loss at initialization {measured:.4g} ({e.get('loss_fn')}, measured on a copy)"
    cause = facts.get("what", "")
    fix = "nothing to fix: the initial predictions are about uniform"
    if expected is None:
        fix = "nothing to fix: reported as measured (no expected value for this loss)"
    if verdict == "too_high":
        cause += "; the initial predictions are confident and wrong"
        fix = (
            "initialize the last layer small (weights ~0.01, bias 0, or the bias at the log of "
            "the class frequencies) so that the first predictions are about uniform"
        )
    elif verdict == "too_low":
        cause += "; far below chance before any training: the target may leak into the input"
        fix = "check that the model's input does not contain the label, and what the loss reads"
    yield tl.finding(
        title=title,
        step=e.get("step"),
        evidence={**facts, "seconds": e.get("seconds")},
        where=Where(source=e.get("source")),
        cause=cause,
        fix=fix,
    )

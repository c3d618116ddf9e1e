"""TD509 log-of-nonpositive."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import Site, finite, fmt, loss_sites

# Ops that can output values <= 0, whose log is -inf/NaN (anything but a softmax/sigmoid/exp).
_SAFE = ("SoftmaxBackward0", "SigmoidBackward0", "ExpBackward0", "SoftplusBackward0")


@rule(
    code="TD509",
    name="log-of-nonpositive",
    severity=Severity.ERROR,
    summary="Values <= 0 (a ReLU or linear output) reach a log-based loss: -inf/NaN.",
    requires=("loss_inputs.stats",),
    events=("loss_input",),
    priority=22,
)
def log_of_nonpositive(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A log-based loss whose input holds the log of values <= 0: `F.nll_loss` / `F.kl_div` fed
    `torch.log(x)` where `x` is a ReLU or linear output (not a softmax), `poisson_nll_loss(...,
    log_input=False)` on a linear output, `binary_cross_entropy` on values outside [0, 1]
    (torch's log of a negative number, a crash on CPU). Names the loss input as the cause, the
    op that produced it and the share of non-positive values.

    ## Why it matters
    log(0) = -inf and log(x < 0) = NaN: the loss turns -inf/NaN, backward spreads NaN into
    every gradient and the next step into the weights. TD201 reports the non-finite loss;
    this rule says that the loss was fed values that were never probabilities.

    ## How it is measured
    On the first steps and the sampled ones the loss-inputs probe measures, per call site,
    the share of non-finite input values and, when the input was produced by `log` (its
    autograd node's saved input, read without a copy) or the loss takes the log itself, the
    share of values <= 0 under the log; for `binary_cross_entropy`, the share outside [0, 1].
    It fires when values <= 0 reached the log and the input or the loss went non-finite, or
    when BCE got values outside [0, 1].

    ## Example
    ```python
    out = F.relu(model(x))                       # meant to be probabilities
    loss = F.nll_loss(torch.log(out), y)         # log(0) = -inf
    ```

    ## Fix
    ```python
    loss = F.cross_entropy(model(x), y)          # or F.nll_loss(F.log_softmax(logits, 1), y)
    ```

    ## Known false positives
    A log of values that are 0 only for masked-out entries which are dropped later still
    counts; the rule needs a non-finite loss or input, so finite results stay silent.
    """
    for site in loss_sites(tl).values():
        f = _bce_range(tl, site) or _log_input(tl, site)
        if f is not None:
            yield f


def _under_log(site: Site) -> str:
    names = [n for n in site.facts.get("producer") or [] if n not in ("AccumulateGrad",)]
    if site.fn == "poisson_nll_loss":
        return f"`{names[0]}`" if names else "the input"
    below = names[1:2]
    return f"`{below[0]}`" if below else "its input"


def _log_input(tl: TimelineView, site: Site) -> Finding | None:
    losses = dict(site.values("loss"))
    bad = []
    for step, share in site.values("log_arg_nonpos"):
        stats = site.stats[step]
        nonfinite = stats.get("nonfinite", 0.0) > 0 or not finite(losses.get(step, 0.0))
        if share > 0 and nonfinite:
            bad.append((step, share))
    if not bad:
        return None
    names = site.facts.get("producer") or []
    if site.fn != "poisson_nll_loss" and names[1:2] and names[1] in _SAFE:
        return None  # log of a softmax underflowing: TD201's case, not a non-probability
    step, share = bad[0]
    what = _under_log(site)
    loss = losses.get(step)
    inside = (
        "takes the log of its input itself" if site.fn == "poisson_nll_loss" else ("gets `log(x)`")
    )
    return tl.finding(
        title=f"`{site.fn}` at {site.source} {inside} with {share:.1%} of x <= 0 "
        f"(x from {what}): the loss is {fmt(loss)}",
        step=step,
        evidence={
            "loss_fn": site.fn,
            "nonpositive_share": {str(s): round(v, 6) for s, v in bad[:8]},
            "input_nonfinite_share": site.stats[step].get("nonfinite"),
            "loss": loss,
            "producer": names,
            "input_min": site.stats[step].get("in_min"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"the values under the log come from {what}, which is not a probability: "
        f"{share:.1%} of them are <= 0 on step {step}, and log(0) = -inf, log(x < 0) = NaN, "
        "so the loss input (and the loss) is non-finite",
        fix="use the stable form: F.cross_entropy(logits, y) or F.nll_loss(F.log_softmax("
        "logits, 1), y); for a positive rate use softplus/exp (or log_input=True on the "
        "linear output) instead of a log of a ReLU/linear output",
        confidence=0.9,
    )


def _bce_range(tl: TimelineView, site: Site) -> Finding | None:
    if site.fn != "binary_cross_entropy":
        return None
    bad = [(s, v) for s, v in site.values("outside_01") if v > 0]
    if not bad:
        return None
    step, share = bad[0]
    stats = site.stats[step]
    producer = (site.facts.get("producer") or ["?"])[0]
    return tl.finding(
        title=f"`binary_cross_entropy` at {site.source} gets {share:.1%} of values outside "
        f"[0, 1] (min {fmt(stats.get('in_min'))}, max {fmt(stats.get('in_max'))})",
        step=step,
        evidence={
            "loss_fn": site.fn,
            "outside_share": share,
            "input_min": stats.get("in_min"),
            "input_max": stats.get("in_max"),
            "producer": site.facts.get("producer"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"binary_cross_entropy takes log(p) and log(1 - p); its input comes from "
        f"`{producer}`, not a sigmoid, so some values are <= 0 or >= 1: NaN, or torch's "
        "'all elements of input should be between 0 and 1' error",
        fix="feed the logits to F.binary_cross_entropy_with_logits (no sigmoid needed)",
        confidence=0.9,
    )

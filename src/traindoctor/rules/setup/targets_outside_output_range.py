"""TD522 targets-outside-output-range."""

from __future__ import annotations

from collections.abc import Iterator
from statistics import median

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import Site, fmt, loss_sites

REGRESSION = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")
# op -> (what it is, the range of its output)
_OPS = {
    "ReluBackward0": ("a ReLU", "[0, inf)"),
    "SigmoidBackward0": ("a sigmoid", "[0, 1]"),
    "TanhBackward0": ("a tanh", "[-1, 1]"),
    "SoftplusBackward0": ("a softplus", "(0, inf)"),
    "ExpBackward0": ("an exp", "(0, inf)"),
}


@rule(
    code="TD522",
    name="targets-outside-output-range",
    severity=Severity.WARNING,
    summary="a regression loss whose prediction comes out of a bounded op (ReLU, sigmoid, "
    "tanh, softplus, exp) while a large share of its targets lie outside that range: a floor "
    "under the loss that no training removes.",
    requires=("loss_inputs.stats",),
    events=("loss_input",),
    priority=21,
)
def targets_outside_output_range(
    tl: TimelineView, *, min_floor: float = 0.1, min_share: float = 0.05
) -> Iterator[Finding]:
    """
    ## What it detects
    `F.mse_loss` / `nn.MSELoss` (also L1, smooth L1, Huber) whose prediction is the output of a
    ReLU, sigmoid, tanh, softplus or exp (the last op before the loss, view-like ops skipped)
    while the targets measured on the user's batches lie outside that op's range: a final
    `nn.ReLU()` with standardized (zero-mean) targets, a decoder ending in `nn.Sigmoid()` that
    reconstructs images normalized into [-1, 1] by `transforms.Normalize((0.5,), (0.5,))`.

    ## Why it matters
    A target outside the range cannot be reached: the best the model can output there is the
    range's edge, so part of the loss is a floor that no amount of training removes, and the
    gradient keeps pushing outputs against the bound (a ReLU's then passes nothing). The loss
    falls, then stalls, and nothing looks broken. Measured: ratschlab/DeepSpot2Cell#3's head
    (a final ReLU, standard-scaled targets) ends at an MSE of 0.58 against 0.22 without the
    ReLU; a conv autoencoder ending in a sigmoid on [-1, 1] images at 1.02 against 0.45 with
    a tanh.

    ## How it is measured
    The loss-inputs probe records the op that made a regression loss's prediction and, on
    steps 1-3 and the sampled steps, measures on the device (targets of the prediction's
    shape only): the share of targets outside the op's range, the loss per element of the
    closest reachable prediction (each target clamped into the range: the floor), and the
    loss per element of predicting the targets' mean (squared distances for MSE, Huber with
    delta 1 for smooth L1/Huber, absolute for L1). It fires when, over the measured steps,
    the median floor is at least `min_floor` (10%) of the mean-prediction loss and the median
    share outside is at least `min_share` (5%). A bounded output whose targets sit inside its
    range (a sigmoid decoder on [0, 1] images, a ReLU on counts) is silent, and so are a few
    targets just outside (noise around a bound). When every target outside takes one value
    (-1 for a missing label) it is a marker: with `reduction='none'` the loss is masked or
    weighted after the call (heatmaps of unlabelled joints) and is not judged; averaged, the
    finding names the marker that reaches the loss.

    ## Example
    ```python
    y = (y - y.mean(0)) / y.std(0)                             # standard-scaled targets
    head = nn.Sequential(nn.Linear(64, 16), nn.ReLU())          # cannot output < 0
    loss = nn.MSELoss()(head(x), y)
    ```

    ## Fix
    ```python
    head = nn.Sequential(nn.Linear(64, 16))   # an unbounded output for standardized targets
    # or keep the activation and put the targets in its range (tanh for [-1, 1] images,
    # sigmoid for [0, 1]; undo the normalization of the targets before the loss)
    ```

    ## Known false positives
    None known. A bounded prediction that is rescaled before the loss (`sigmoid(z) * 10`) is
    not made by the bounded op and is not looked at (a miss when the scale is still short).
    """
    for site in loss_sites(tl).values():
        if site.fn in REGRESSION:
            finding = _outside(tl, site, min_floor, min_share)
            if finding is not None:
                yield finding


def _outside(tl: TimelineView, site: Site, min_floor: float, min_share: float) -> Finding | None:
    names = site.facts.get("producer") or []
    op = names[0] if names else None
    if op not in _OPS:
        return None
    floors = dict(site.values("rng_floor"))
    bases = dict(site.values("rng_base"))
    shares = dict(site.values("rng_out"))
    steps = sorted(s for s in floors if s in bases and s in shares and bases[s] > 0)
    if not steps:
        return None
    ratio = median(floors[s] / bases[s] for s in steps)
    share = median(shares[s] for s in steps)
    if ratio < min_floor or share < min_share:
        return None
    floor = median(floors[s] for s in steps)
    marker = _marker(site, steps)
    none = (site.facts.get("options") or {}).get("reduction") in (0, "none")
    if marker is not None and none:
        # Every target outside is one value (-1 for a missing label) and the loss is kept per
        # element: the marked elements are masked or weighted after the loss (the heatmaps
        # of unlabelled joints); what the objective pays is not measured here.
        return None
    what, span = _OPS[op]
    loss = site.losses()
    seen = f"; observed loss {fmt(loss[0])} -> {fmt(loss[-1])}" if loss else ""
    lo = site.values("t_min")
    hi = site.values("t_max")
    targets = (
        f" (targets from {fmt(min(v for _, v in lo))} to {fmt(max(v for _, v in hi))})"
        if lo and hi
        else ""
    )
    cause = (
        f"the prediction is the output of {what} (`{op}`), which only takes values in {span}, "
        f"but {share:.0%} of the targets lie outside it{targets}. The closest the model can "
        f"come to those is the range's edge: measured on the batches, a loss of {fmt(floor)} "
        f"per element remains however well it trains, {ratio:.0%} of the loss of predicting "
        "the targets' mean. "
        + (
            f"Every target outside the range is {fmt(marker)}: a marker (a missing or "
            "ignored value) that reaches the averaged loss unmasked, so the model is trained "
            "toward it"
            if marker is not None
            else "The targets were put in another range than the output activation can "
            "produce (standardized targets under a ReLU, images normalized to [-1, 1] under "
            "a sigmoid)"
        )
    )
    return tl.finding(
        title=f"`{site.fn}` at {site.source}: {share:.0%} of the targets lie outside {span}, "
        f"the range of {what} that makes the prediction: a floor of {fmt(floor)} per element "
        f"({ratio:.0%} of a mean prediction's loss){seen}",
        step=steps[0],
        evidence={
            "loss_fn": site.fn,
            "op": op,
            "range": span,
            "share_outside": {s: round(shares[s], 4) for s in steps},
            "floor_per_element": {s: round(floors[s], 6) for s in steps},
            "mean_prediction_loss": {s: round(bases[s], 6) for s in steps},
            "floor_ratio": round(ratio, 4),
            "observed_loss": loss[:1] + loss[-1:] if loss else [],
            "producer": names,
            "measured_steps": len(steps),
            "marker": marker,
        },
        where=Where(op=op, source=site.source),
        cause=cause,
        fix=(
            f"mask the elements whose target is {fmt(marker)} out of the loss "
            "(F.mse_loss(pred, y, reduction='none') * mask, summed and divided by mask.sum())"
            if marker is not None
            else "make the output activation match the targets: drop the final ReLU/sigmoid "
            "for standardized targets (an unbounded Linear output), use tanh for targets in "
            "[-1, 1] and sigmoid for [0, 1], or transform the targets into the activation's "
            "range (undo the Normalize, log1p without standard scaling)"
        ),
        confidence=0.85,
    )


def _marker(site: Site, steps: list[int]) -> float | None:
    """The one value every target outside the range takes on every measured step (-1 for a
    missing label), or None: targets spread outside it (or not measured, older runs)."""
    lows = dict(site.values("rng_omin"))
    highs = dict(site.values("rng_omax"))
    values = {lows.get(s) for s in steps} | {highs.get(s) for s in steps}
    if len(values) != 1:
        return None
    (value,) = values
    return value

"""TD521 logits-clamped-at-zero."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import Site, fmt, loss_sites

CLASS_LOSSES = ("cross_entropy", "nll_loss")
_OPS = {
    "ReluBackward0": "a ReLU",
    "ClampBackward1": "clamp(min=0)",
    "ClampMinBackward0": "clamp(min=0)",
    "HardtanhBackward0": "a ReLU6/hardtanh(0, .)",
}


@rule(
    code="TD521",
    name="logits-clamped-at-zero",
    severity=Severity.WARNING,
    summary="a ReLU (or clamp at 0) on the logits of cross_entropy/nll_loss: every negative "
    "logit is 0 and passes no gradient; rows whose logits are all 0 train nothing.",
    requires=("loss_inputs.stats",),
    events=("loss_input",),
    priority=20,
)
def logits_clamped_at_zero(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    The input of `F.cross_entropy` / `nn.CrossEntropyLoss` made by a ReLU, `relu6`, or
    `clamp(min=0)` applied after the last layer (an `nn.ReLU()` left at the end of an
    `nn.Sequential`), and `nll_loss` given `log_softmax` of such clamped values, when some
    logits measured on the user's batches are exactly 0.

    ## Why it matters
    Cross-entropy wants unbounded logits: a class is made unlikely by a negative logit. After
    a clamp at 0, every logit that would be negative is 0 and its gradient is cut: a target
    class whose logit is 0 cannot be raised through it, and an example whose logits are all 0
    predicts the uniform distribution and passes no gradient at all, for good. The loss still
    falls, so nothing looks broken; the accuracy ends lower (pytorch/tutorials#1526: 71.5%
    against 98.2% on Fashion-MNIST with the ReLU removed; a 784-512-512-10 MLP on
    synthetic 10-class data with Adam, 0.70-0.79 against 1.00, with 25-42% of the
    examples' logits all 0 at the end).

    ## How it is measured
    The loss-inputs probe records the autograd op that made a class loss's input (below
    view-like ops, and below a log_softmax for nll_loss), and on step 1-3 and the sampled
    steps measures on the device, from that op's saved tensors, the share of the logits at 0,
    the share of rows whose every logit is 0, and the share of the class-index targets whose
    own logit is 0. It fires when a measured step had logits at 0; error when a measured
    step had rows whose logits were all 0 (examples that trained nothing), else a warning. A
    softplus (smooth, never 0, its gradient never cut: the same final accuracy, 1.00, where
    the same MLP converged; slower where it had not, 0.21 against 0.39 after 5 epochs of SGD at
    1e-3), a ReLU inside the network and a log_softmax over unclamped logits are not reported;
    sigmoid or softmax outputs fed to cross-entropy are TD506's.

    ## Example
    ```python
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(),
                          nn.Linear(512, 10), nn.ReLU())      # ReLU on the logits
    loss = nn.CrossEntropyLoss()(model(x), y)
    ```

    ## Fix
    ```python
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(),
                          nn.Linear(512, 10))                 # raw logits
    ```

    ## Known false positives
    None known for a clamp directly on the logits. Logits that are non-negative for another
    reason (capsule lengths, an average pool of ReLU maps as in SqueezeNet) are not made by a
    clamp and are not looked at.
    """
    for site in loss_sites(tl).values():
        if site.fn in CLASS_LOSSES:
            finding = _clamped(tl, site)
            if finding is not None:
                yield finding


def _pct(share: float) -> str:
    """A share as a percentage; a share that rounds to 0% but is not 0 reads "<1%"."""
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def _clamped(tl: TimelineView, site: Site) -> Finding | None:
    clamp = site.facts.get("clamp") or {}
    op = clamp.get("op")
    if op not in _OPS or not site.classes or site.classes < 2:
        return None
    zeros = site.values("clamp_zero")
    hit = [(s, v) for s, v in zeros if v > 0]
    if not hit:
        return None  # the clamp never bit: nothing lost
    rows = dict(site.values("clamp_rows"))
    tgts = dict(site.values("clamp_tgt"))
    dead = {s: v for s, v in rows.items() if v > 0}
    first = hit[0][0]
    module = clamp.get("module")
    at = f" on `{module}`'s output" if module else ""
    under = (
        " under the log_softmax"
        if "LogSoftmaxBackward0" in (site.facts.get("producer") or [])[:1]
        else ""
    )
    share = max(v for _, v in hit)
    tgt = max(tgts.values(), default=None)
    loss = site.losses()
    seen = f"; observed loss {fmt(loss[0])} -> {fmt(loss[-1])}" if loss else ""
    bits = [f"up to {_pct(share)} of the logits were exactly 0"]
    if tgt:
        bits.append(f"the target's own logit in up to {_pct(tgt)} of the rows")
    if dead:
        bits.append(
            f"every logit of up to {_pct(max(dead.values()))} of the rows (first at step {min(dead)})"
        )
    cause = (
        f"`{op}` ({_OPS[op]}){at}{under} clamps the logits from below at 0: on the measured "
        f"steps {', '.join(bits)}. A logit clamped at 0 gets no gradient through the clamp, "
        "so a target class stuck there cannot be raised, and a row whose logits are all 0 "
        "predicts the uniform distribution (loss ln C) and passes no gradient at all: those "
        "examples stop training for good. Cross-entropy expects unbounded logits (a class is "
        "made unlikely by a negative logit)"
    )
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets logits clamped at 0 by {_OPS[op]} "
        f"(`{op}`){at}: "
        f"{_pct(share)} of them exactly 0"
        + (f", all of a row's in {_pct(max(dead.values()))} of rows" if dead else "")
        + seen,
        step=first,
        evidence={
            "loss_fn": site.fn,
            "clamp_op": op,
            "clamp_module": module,
            "classes": site.classes,
            "zero_logit_share": {s: round(v, 4) for s, v in zeros},
            "all_zero_row_share": {s: round(v, 4) for s, v in sorted(rows.items())},
            "target_logit_zero_share": {s: round(v, 4) for s, v in sorted(tgts.items())},
            "observed_loss": loss[:1] + loss[-1:] if loss else [],
            "producer": site.facts.get("producer"),
            "measured_steps": len(zeros),
        },
        where=Where(module=module, op=op, source=site.source),
        cause=cause,
        fix="remove the ReLU/clamp after the last layer and pass its raw output (the logits) "
        "to the loss: `nn.Sequential(..., nn.Linear(512, 10))`; apply softmax only to "
        "report probabilities",
        confidence=0.9,
        severity=Severity.ERROR if dead else None,
    )

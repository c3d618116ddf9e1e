"""TD213 loss-unbounded-below."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import loss_source


@rule(
    code="TD213",
    name="loss-unbounded-below",
    severity=Severity.ERROR,
    summary="The training loss falls without bound below zero while the standard loss inside "
    "it does not improve: a term minimized towards -inf (most often a KL divergence with the "
    "wrong sign).",
    requires=("loss.train", "loss.backward", "loss_inputs.stats"),
    events=("backward_call", "log_call", "loss_input", "gradient_path"),
    facts=("optimizers",),
    # Before TD507: a sigmoid driven to exactly 0/1 by the blow-up sits at the BCE's clamp.
    priority=8,
)
def loss_unbounded_below(
    tl: TimelineView, *, min_steps: int = 20, factor: float = 100.0
) -> Iterator[Finding]:
    """
    ## What it detects
    A training loss that ends below zero at `factor` (100) times the size of its start, or
    more, while a standard loss computed in the same steps (`F.binary_cross_entropy`,
    `F.mse_loss`, ... on the model's output: the part that fits the data) ends no lower than it
    started. The rest of the loss, the terms written by hand beside the standard one, fell
    without bound: the optimizer drives them towards -inf instead of fitting the data.

    ## Why it matters
    A loss term that is bounded on one side only must be added with the sign that bounds the
    minimization. A VAE's KL divergence is >= 0; `recon - KLD` (or `recon + 0.5 * sum(1 +
    logvar - mu^2 - exp(logvar))`, the negative of the divergence) is minimized by making the
    encoder's variance or means explode: the total loss heads for -inf, the reconstruction gets
    worse, and the run ends in overflow or a useless latent space. The loss curve falling looks
    like progress.

    ## How it is measured
    From the per-step loss (`doc.log(loss=...)`, else the value `backward()` runs on): the
    median of the first and of the last fifth of the run. From the loss-input probe, the value
    of each standard loss call on the first and the sampled steps. Reported as an error when
    some standard loss in the run ends at or above its start; info when none was seen or it
    improved; not judged with several optimizers (a GAN's scores) or a loss that ends above -1 (a density model's negative log-likelihood can
    go below zero by design; it does not grow a hundredfold past it in a healthy run).

    A log-likelihood used as the loss without its minus sign is the other case, found on the
    loss's graph: the loss is a label's score minus the log of the normalizer with a plus
    sign (`score - logsumexp(...)`, a CRF's `numerator - denominator`, `log_softmax(x)[y]`:
    each <= 0), read on the walk step's backward through adds, subtractions, negations,
    sums, means, views and products with a number (_loglik.py). Reported as an error when
    the per-step loss also stays <= 0 at every step and its last fifth's median is 10% or more
    below its first fifth's (the labels made ever less likely); nothing when an optimizer has
    `maximize=True` or several optimizers run.

    ## Example
    ```python
    llh = crf(emissions, tags, mask=mask)   # pytorch-crf: the log-likelihood, <= 0
    loss = llh                              # minimized: the gold tags made least likely
    ```
    Fix: `loss = -crf(emissions, tags, mask=mask)`. And:
    ```python
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())   # the divergence, >= 0
    loss = F.binary_cross_entropy(recon, x, reduction='sum') - KLD   # wrong sign
    ```

    ## Fix
    ```python
    loss = F.binary_cross_entropy(recon, x, reduction='sum') + KLD
    ```

    ## Known false positives
    An objective meant to be unbounded below (an energy or a critic's score without a
    penalty) whose run also computes a standard loss: lower the severity with `ignore`. A
    log-likelihood minimized on purpose (pushing down the likelihood of rejected labels alone,
    with one optimizer) reads as the missing minus sign.
    """
    values = _per_step_losses(tl)
    if len(values) < min_steps:
        return
    loglik = _log_likelihood_finding(tl, values)
    if loglik is not None:
        yield loglik
        return
    w = max(3, len(values) // 5)
    head = statistics.median(v for _, v in values[:w])
    tail = statistics.median(v for _, v in values[-w:])
    first_abs = max(abs(head), max(abs(v) for _, v in values[:3]), 1e-12)
    if not (tail <= -1.0 and -tail >= factor * first_abs):
        return
    if len(tl.fact("optimizers") or []) > 1:
        return  # a GAN's or an actor-critic's losses: players' scores may run off by design
    parts = _standard_parts(tl)
    flat = [(fn, src, a, b) for fn, src, a, b in parts if b >= a]
    severity = Severity.ERROR if flat else Severity.INFO
    evidence = {
        "first_median": head,
        "last_median": tail,
        "times_start": -tail / first_abs,
        "steps": len(values),
        "standard_losses": [
            {"fn": fn, "source": src, "first": a, "last": b} for fn, src, a, b in parts
        ],
    }
    if flat:
        fn, src, a, b = flat[0]
        inside = (
            f"; the `{fn}` computed in the same steps{f' ({src})' if src else ''} went from "
            f"{a:.4g} to {b:.4g} (no better) while the total fell {-tail / first_abs:.3g}x its "
            "start below zero: the rest of the loss fell without bound (which term is not "
            "measured)"
        )
    else:
        inside = (
            "; no standard loss was seen beside it, so whether this objective may go below "
            "zero by design (a density's negative log-likelihood) is not known"
        )
    yield tl.finding(
        title=f"the training loss fell from {head:.4g} to {tail:.4g}, {-tail / first_abs:.3g}x "
        f"the size of its start below zero, over {len(values)} steps",
        step=values[-w][0],
        evidence=evidence,
        where=Where(source=_backward_source(tl)),
        cause=f"the loss falls without bound below zero{inside}. A term bounded on one side "
        "only is being minimized towards -inf; most often a KL divergence (>= 0) added with "
        "the wrong sign (`recon - KLD`, or `0.5 * sum(1 + logvar - mu^2 - exp(logvar))` "
        "added), or a loss subtracted on purpose (gradient ascent on a forget set, a "
        "negated score) with nothing to bound it",
        fix="check the sign of every hand-written term against what it is meant to do; a KL "
        "divergence is added to the reconstruction: loss = recon + KLD, with "
        "KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) (>= 0); a term "
        "subtracted on purpose needs a bound (clamp it, or stop when it passes a threshold)",
        severity=severity,
        confidence=0.7 if severity is Severity.ERROR else 0.4,
    )


def _log_likelihood_finding(
    tl: TimelineView, values: list[tuple[int, float]], loglik_fall: float = 0.1
) -> Finding | None:
    """The loss is `+ (score - logsumexp)` on the graph (a log-likelihood, <= 0) and the
    measured loss stays <= 0 and falls: the minimizer makes the labels least likely."""
    facts = [
        (e["step"], e["log_likelihood"])
        for e in tl.events("gradient_path")
        if isinstance(e.get("log_likelihood"), dict)
    ]
    if not facts or len(tl.fact("optimizers") or []) > 1:
        return None
    # The first walk that knows its lines (zero-code mode's step 1 ran before the attach).
    step, ll = next((f for f in facts if f[1].get("at") or f[1].get("score_at")), facts[0])
    w = max(3, len(values) // 5)
    head = statistics.median(v for _, v in values[:w])
    tail = statistics.median(v for _, v in values[-w:])
    top = max(v for _, v in values)
    if not (top <= 1e-6 * max(1.0, abs(head)) and head < 0 and tail < head * (1 + loglik_fall)):
        return None
    form = ll.get("form")
    if form == "log_softmax":
        what = "a label's `log_softmax` (its log-probability, <= 0) added with a plus sign"
        op = "log_softmax"
    else:
        what = (
            "a label's score minus a log-sum-exp normalizer (`score - logsumexp(...)`, a "
            "log-probability such as a CRF's log-likelihood, <= 0) added with a plus sign"
        )
        op = "logsumexp"
    at = ll.get("at") or ll.get("score_at")
    return tl.finding(
        title=f"the loss is a log-likelihood minimized: it fell from {head:.4g} to {tail:.4g} "
        "below zero as the labels were made less likely",
        step=step,
        evidence={
            "form": form,
            "normalizer_at": ll.get("at"),
            "score_at": ll.get("score_at"),
            "first_median": head,
            "last_median": tail,
            "max_loss": top,
            "steps": len(values),
        },
        where=Where(op=op, source=at or _backward_source(tl)),
        cause=f"measured on the graph of step {step}: the loss is {what}; every step's loss "
        f"was <= 0 (max {top:.4g}) and it fell from {head:.4g} to {tail:.4g}. Minimizing a "
        "log-likelihood makes the true labels as unlikely as possible: the loss heads for "
        "-inf while the model learns the opposite of the labels",
        fix="minimize the negative log-likelihood: put the minus sign on it (pytorch-crf: "
        "`loss = -crf(emissions, tags, mask=mask)`; by hand: `loss = -(score - logsumexp)` "
        "or `F.nll_loss(log_probs, y)`), or build the optimizer with `maximize=True`",
        confidence=0.85,
    )


def _per_step_losses(tl: TimelineView) -> list[tuple[int, float]]:
    """(step, mean finite loss) from doc.log(loss=...), else from the backward roots."""
    out = []
    for name in ("loss.train", "loss.backward"):
        for step, vals in tl.series(name):
            finite = [float(v) for v in vals or () if isinstance(v, int | float)]
            finite = [v for v in finite if math.isfinite(v)]
            if finite:
                out.append((step, sum(finite) / len(finite)))
        if out:
            return out
    return out


def _standard_parts(tl: TimelineView) -> list[tuple[str, str | None, float, float]]:
    """(fn, source, first, last) of each standard loss site's value on the observed steps."""
    sites = {
        e.get("site"): (e.get("fn"), e.get("source"))
        for e in tl.events("loss_input")
        if e.get("site") is not None
    }
    seen: dict[int, list[float]] = {}
    for _, stats in tl.series("loss_inputs.stats"):
        for key, v in (stats or {}).items():
            site, _, stat = key.rpartition(".")
            if stat != "loss" or not isinstance(v, int | float) or not math.isfinite(v):
                continue
            try:
                seen.setdefault(int(site), []).append(float(v))
            except ValueError:
                continue
    out = []
    for site, vals in sorted(seen.items()):
        if len(vals) < 4 or site not in sites:
            continue
        k = max(1, len(vals) // 4)
        fn, src = sites[site]
        out.append((str(fn), src, statistics.median(vals[:k]), statistics.median(vals[-k:])))
    return out


def _backward_source(tl: TimelineView) -> str | None:
    """The line of the backward() call (the loss it runs on is the one written by hand), else
    the line that logs the loss."""
    calls = [e.get("source") for e in tl.events("backward_call") if e.get("source")]
    return calls[0] if calls else loss_source(tl)

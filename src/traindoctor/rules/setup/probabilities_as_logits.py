"""TD506 probabilities-as-logits."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import Site, fmt, loss_sites

ROW_TOL = 1e-3  # rows sum to 1 within this: float32 softmax rows are off by ~1e-7
# Machine epsilon of the low-precision dtypes a softmax may round its rows to (under autocast:
# Lightning's "bf16-mixed", torch.autocast on CPU). Each value is rounded to half an epsilon of
# itself, so a row sums to 1 within eps/2 of the values' total (bfloat16, 4 classes: 2^-9
# measured); two epsilons leave room for the softmax's own arithmetic in that dtype.
LOW_PRECISION_EPS = {"bfloat16": 2.0**-7, "float16": 2.0**-10}
# Losses that apply their own softmax (over the class dim) or sigmoid (per element).
SOFTMAX_LOSSES = ("cross_entropy",)
LOG_PROB_LOSSES = ("nll_loss",)  # expect log-probabilities (<= 0, logsumexp 1 per row)
SIGMOID_LOSSES = ("binary_cross_entropy_with_logits", "multilabel_soft_margin_loss")
SQUASHING = ("SoftmaxBackward0", "SigmoidBackward0")
MIN_STEPS_BY_VALUE = 3  # sigmoid losses without a sigmoid op in front: in [0,1] this often
# A log-probability is <= 0 (float32 log_softmax rounds to at most 0): inputs above this on
# every measured step are raw scores, not rounding.
LOG_PROB_MAX = 1e-2
# Log-probabilities over the class dim: each row's logsumexp is 0 (float32: ~1e-6; float16:
# ~1e-3). A row off by more than this (its probabilities sum below 0.9 or above 1.1) was
# normalized over another dim.
LSE_TOL = 0.1


def double_softmax_floor(classes: int) -> float:
    """Lowest cross-entropy reachable on probabilities p: at p = one-hot on the target,
    CE = -1 + log(e + C - 1) = log(1 + (C - 1)/e)."""
    return math.log1p((classes - 1) / math.e)


def double_sigmoid_floor(positive_share: float) -> float:
    """Lowest BCE-with-logits on p in [0,1]: log(1 + 1/e) per positive (p = 1), log 2 per
    negative (p = 0)."""
    return positive_share * math.log1p(math.exp(-1)) + (1 - positive_share) * math.log(2)


@rule(
    code="TD506",
    name="probabilities-as-logits",
    severity=Severity.ERROR,
    summary="softmax/sigmoid outputs fed to a loss that applies its own (a floor), or to "
    "nll_loss, which expects log-probabilities (a negative, bounded loss).",
    requires=("loss_inputs.stats",),
    events=("loss_input",),
    priority=19,
)
def probabilities_as_logits(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Probabilities passed to a loss that expects logits: `F.cross_entropy` /
    `nn.CrossEntropyLoss` (which apply log-softmax) fed rows that lie in [0, 1] and sum to 1
    (a softmax output), and `binary_cross_entropy_with_logits` / `BCEWithLogitsLoss` fed
    sigmoid outputs. Reports the loss floor this imposes next to the observed loss. Also
    probabilities passed to `F.nll_loss` / `nn.NLLLoss`, which expect *log*-probabilities
    (`softmax` where `log_softmax` was meant): the "loss" is then -mean(p_target), negative
    and bounded in [-1, 0].

    `kl_div` / `nn.KLDivLoss` given a softmax's output as its input (log-probabilities
    expected) is a note: its loss is sum t log t - sum t p, minimized by the target's argmax.

    ## Why it matters
    The loss squashes the probabilities a second time. Over C classes the best the model can
    do is a one-hot p, whose cross-entropy is log(1 + (C-1)/e) (0.74 for C = 4, 1.9 for
    C = 100), not 0; the gradient through the second softmax is small and flat, so training
    is slow and ends at a mediocre accuracy although nothing looks broken. `nll_loss` only
    picks -input[target]: on probabilities that is -p_target, not -log p_target, so the loss
    goes negative (a log-likelihood cannot) and a confidently wrong prediction (p_target ~ 0)
    gets almost no gradient instead of the largest one.

    ## How it is measured
    The loss-inputs probe wraps the standard losses while the doctor is attached. On step 1-3
    and the sampled steps it measures on the device, per call site, the input's min, max and
    the largest deviation of a row sum (over the class dim) from 1, and records the op that
    produced the input (SoftmaxBackward0, SigmoidBackward0). Cross-entropy fires when every
    measured step has all values in [0, 1] and rows summing to 1 within 1e-3 (within two
    machine epsilons for values rounded to bfloat16 or float16 on the way from the op that made
    them, under autocast: 0.0156 and 0.00195; a bfloat16 row of 4 classes is off by 2^-9, so
    1e-3 would miss every bfloat16 softmax). A sigmoid loss fires when every measured step
    is in [0, 1] and the input comes from a sigmoid (or, with no such op, on at least 3
    measured steps). The floor: with p one-hot on the target,
    CE = -1 + log(e + C - 1) = log(1 + (C-1)/e); for BCE-with-logits, log(1 + 1/e) = 0.313 per
    positive and log 2 = 0.693 per negative element, weighted by the measured positive share.
    `nll_loss` fires when every measured step has all values in [0, 1] and rows summing to 1
    within that tolerance (softmax outputs), or values in [0, 1] made by a sigmoid; the
    observed loss (negative) is reported next to its range [-1, 0]. `nll_loss` given values
    above 0.01 on every measured step (raw scores: no log-probability is above 0) is reported
    too: its loss has no lower bound. So is `nll_loss` given values <= 0 whose rows'
    logsumexp over the class dim is 0.1 or further from 0 on every measured step:
    log-probabilities normalized over another dim (a log_softmax over the nodes of a graph,
    then the training nodes picked by a mask, which hides the dim from TD508's graph walk).
    `ctc_loss` / `nn.CTCLoss` fires when every measured step has a row whose logsumexp over
    the last (class) dim is 0.1 or further from 0: raw scores where log-probabilities belong
    (the log_softmax left out; trained, they need not stay above 0), or a log_softmax over
    another dim.

    ## Example
    ```python
    probs = model(x).softmax(dim=1)
    loss = nn.CrossEntropyLoss()(probs, y)     # softmax applied twice
    loss = F.nll_loss(F.softmax(model(x), dim=1), y)   # -mean(p_target), not the NLL
    ```

    ## Fix
    ```python
    logits = model(x)
    loss = nn.CrossEntropyLoss()(logits, y)   # apply softmax only for predictions
    loss = F.nll_loss(F.log_softmax(model(x), dim=1), y)
    ```

    ## Known false positives
    A model whose raw outputs happen to lie in [0, 1] fed to a sigmoid loss with no sigmoid
    in front (3 measured steps are required then). Probabilities as *targets* (distillation,
    label smoothing) are fine and not looked at: only the input is.
    """
    for site in loss_sites(tl).values():
        if site.fn in SOFTMAX_LOSSES:
            finding = _softmax(tl, site)
        elif site.fn in LOG_PROB_LOSSES:
            finding = _log_probs(tl, site) or _above_zero(tl, site) or _not_normalized(tl, site)
        elif site.fn in SIGMOID_LOSSES:
            finding = _sigmoid(tl, site)
        elif site.fn == "ctc_loss":
            finding = _ctc_not_log_probs(tl, site)
        elif site.fn == "kl_div":
            finding = _kl_div_probs(tl, site)
        else:
            finding = None
        if finding is not None:
            yield finding


def row_tolerance(site: Site) -> float:
    """How far from 1 a softmax row of this site may sum: ROW_TOL, or two epsilons of the
    low-precision dtype its values were rounded to (the input's, or one before a cast)."""
    eps = max(LOW_PRECISION_EPS.get(site.facts.get(k) or "", 0.0) for k in _DTYPE_FACTS)
    return max(ROW_TOL, 2 * eps)


_DTYPE_FACTS = ("input_dtype", "values_dtype")


def _in_unit(site: Site) -> list[int]:
    """Measured steps; empty unless every one of them is in [0, 1]."""
    steps = sorted(s for s, v in site.stats.items() if "in_min" in v and "in_max" in v)
    ok = all(site.stats[s]["in_min"] >= 0.0 and site.stats[s]["in_max"] <= 1.0 for s in steps)
    return steps if ok else []


def _losses(site: Site) -> dict[str, float]:
    values = site.losses()
    if not values:
        return {}
    return {"first": values[0], "last": values[-1], "min": min(values)}


def _softmax(tl: TimelineView, site: Site) -> Finding | None:
    classes = site.classes
    steps = _in_unit(site)
    if not steps or not classes or classes < 2:
        return None
    devs = [site.stats[s].get("rowsum_dev") for s in steps]
    tol = row_tolerance(site)
    producer = (site.facts.get("producer") or [None])[0]
    rows_one = all(d is not None and d <= tol for d in devs)
    # Sigmoid outputs (measured: made by a sigmoid, every value in [0, 1]) have the same
    # floor: each logit is capped at 1 and floored at 0 whatever the row sums to.
    if not rows_one and producer != "SigmoidBackward0":
        return None
    floor = double_softmax_floor(classes)
    loss = _losses(site)
    seen = f"; observed loss {fmt(loss['first'])} -> {fmt(loss['last'])}" if loss else ""
    made = f" (made by `{producer}`)" if producer in SQUASHING else ""
    measured = (
        f"every row summed to 1 (max deviation {max(devs):.1e}): softmax outputs"
        if rows_one
        else "the input is a sigmoid's output"
    )
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets probabilities{made}, not logits: its loss "
        f"cannot go below {floor:.3f} over {classes} classes{seen}",
        step=steps[0],
        evidence={
            "loss_fn": site.fn,
            "classes": classes,
            "loss_floor": round(floor, 6),
            "ln_classes": round(math.log(classes), 6),
            "observed_loss": loss,
            "input_min": min(site.stats[s]["in_min"] for s in steps),
            "input_max": max(site.stats[s]["in_max"] for s in steps),
            "max_row_sum_deviation": max((d for d in devs if d is not None), default=None),
            "measured_steps": len(steps),
            "producer": site.facts.get("producer"),
            "input_shape": site.facts.get("input_shape"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"on all {len(steps)} measured steps every input value lay in [0, 1] and "
        f"{measured}. {site.fn} applies log-softmax to it, so even a perfect one-hot "
        f"prediction costs log(1 + (C-1)/e) = {floor:.3f} (ln C = {math.log(classes):.3f}) and "
        "the gradient is flattened",
        fix="pass the logits (the output before softmax or sigmoid) to the loss; apply softmax only to "
        "report probabilities, or use F.nll_loss(torch.log_softmax(logits, 1), y)",
        confidence=0.95,
    )


def _log_probs(tl: TimelineView, site: Site) -> Finding | None:
    """nll_loss on probabilities: log-probabilities are <= 0; these lie in [0, 1]."""
    classes = site.classes
    steps = _in_unit(site)
    if not steps or not classes or classes < 2:
        return None
    producer = (site.facts.get("producer") or [None])[0]
    devs = [site.stats[s].get("rowsum_dev") for s in steps]
    tol = row_tolerance(site)
    rows_one = all(d is not None and d <= tol for d in devs)
    if not rows_one and producer != "SigmoidBackward0":
        return None
    if max(site.stats[s]["in_max"] for s in steps) <= 0.0:
        return None  # all zeros: log-probabilities of 1, nothing to tell
    loss = _losses(site)
    seen = f"; observed loss {fmt(loss['first'])} -> {fmt(loss['last'])}" if loss else ""
    made = f" (made by `{producer}`)" if producer in SQUASHING else ""
    what = (
        f"every row summed to 1 (max deviation {max(devs):.1e}): softmax outputs"
        if rows_one
        else "sigmoid outputs"
    )
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets probabilities{made}, not log-probabilities: "
        f"the loss is -mean(p_target), bounded in [-1, 0]{seen}",
        step=steps[0],
        evidence={
            "loss_fn": site.fn,
            "classes": classes,
            "loss_range": [-1.0, 0.0],
            "observed_loss": loss,
            "input_min": min(site.stats[s]["in_min"] for s in steps),
            "input_max": max(site.stats[s]["in_max"] for s in steps),
            "max_row_sum_deviation": max(devs) if rows_one else None,
            "measured_steps": len(steps),
            "producer": site.facts.get("producer"),
            "input_shape": site.facts.get("input_shape"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"on all {len(steps)} measured steps every input value lay in [0, 1] and {what}. "
        f"{site.fn} expects log-probabilities (<= 0) and only picks -input[target]: on "
        "probabilities that is -p_target, not -log p_target, so the loss is negative, cannot "
        "go below -1, and a confidently wrong prediction gets almost no gradient",
        fix="use log_softmax instead of softmax in front of nll_loss "
        "(F.nll_loss(F.log_softmax(logits, 1), y)), or pass the logits to F.cross_entropy",
        confidence=0.95 if rows_one else 0.85,
    )


def _above_zero(tl: TimelineView, site: Site) -> Finding | None:
    """nll_loss on raw scores (the log_softmax left out): values above 0 on every measured
    step are no log-probabilities, and -input[target] then has no lower bound."""
    steps = sorted(s for s, v in site.stats.items() if "in_max" in v)
    if not steps or not site.classes or site.classes < 2 or _in_unit(site):
        return None
    if "LogBackward0" in (site.facts.get("producer") or []):
        return None  # a log of unnormalized values: TD509 judges its domain
    highs = [site.stats[s]["in_max"] for s in steps]
    if min(highs) <= LOG_PROB_MAX:
        return None
    loss = _losses(site)
    seen = f"; observed loss {fmt(loss['first'])} -> {fmt(loss['last'])}" if loss else ""
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets raw scores (values up to {fmt(max(highs))}), "
        f"not log-probabilities: the loss -input[target] has no lower bound{seen}",
        step=steps[0],
        evidence={
            "loss_fn": site.fn,
            "classes": site.classes,
            "observed_loss": loss,
            "input_min": min(site.stats[s].get("in_min", 0.0) for s in steps),
            "input_max": max(highs),
            "measured_steps": len(steps),
            "producer": site.facts.get("producer"),
            "input_shape": site.facts.get("input_shape"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"on all {len(steps)} measured steps the input had values above 0 (max "
        f"{fmt(max(highs))}); a log-probability is <= 0. {site.fn} only picks -input[target], "
        "so on unnormalized scores training raises the target's score without bound instead "
        "of lowering the other classes'",
        fix="put log_softmax over the class dim in front of nll_loss "
        "(F.nll_loss(F.log_softmax(scores, 1), y)), or pass the scores to F.cross_entropy",
        confidence=0.9,
    )


def _not_normalized(tl: TimelineView, site: Site) -> Finding | None:
    """nll_loss on log-probabilities normalized over another dim: values <= 0, but no row's
    probabilities sum to 1 over the classes (log_softmax over the batch, or over a graph's
    nodes before the training nodes are picked by a mask: the index hides the dim from the
    graph, TD508's view)."""
    steps = sorted(s for s, v in site.stats.items() if "lse_dev" in v and "in_max" in v)
    if not steps or not site.classes or site.classes < 2:
        return None
    if (site.facts.get("producer") or [None])[0] == "LogSoftmaxBackward0":
        return None  # made by the log_softmax (through views only): TD508 names its dim
    stats = [site.stats[s] for s in steps]
    if any(not v["in_max"] <= LOG_PROB_MAX or not math.isfinite(v["in_min"]) for v in stats):
        return None  # raw scores (_above_zero) or -inf entries: not this case
    devs = [v["lse_dev"] for v in stats]
    if not all(math.isfinite(d) and d > LSE_TOL for d in devs):
        return None
    loss = _losses(site)
    seen = f"; observed loss {fmt(loss['first'])} -> {fmt(loss['last'])}" if loss else ""
    least = min(devs)
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets log-probabilities not normalized over its "
        f"{site.classes} classes (a row's logsumexp {least:.3g} or more from 0){seen}",
        step=steps[0],
        evidence={
            "loss_fn": site.fn,
            "classes": site.classes,
            "observed_loss": loss,
            "input_max": max(v["in_max"] for v in stats),
            "min_row_logsumexp_deviation": least,
            "max_row_logsumexp_deviation": max(devs),
            "measured_steps": len(steps),
            "producer": site.facts.get("producer"),
            "input_shape": site.facts.get("input_shape"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"on all {len(steps)} measured steps every input value was <= 0, as "
        f"log-probabilities are, but some row's logsumexp over the class dim was {least:.3g} "
        "or further from 0 (its probabilities do not sum to 1): the log_softmax normalized "
        "another dim (dim=0, the batch or the graph's nodes), so the loss compares each "
        "example's score against the other examples instead of the other classes",
        fix="apply log_softmax over the class dim (F.log_softmax(x, dim=1) for (N, C) scores, "
        "dim=-1 for (..., C)) before indexing and nll_loss, or pass the scores to "
        "F.cross_entropy",
        confidence=0.9,
    )


def _ctc_not_log_probs(tl: TimelineView, site: Site) -> Finding | None:
    """ctc_loss on values that are no log-probabilities over the classes: rows whose logsumexp
    over the last (class) dim is far from 0 on every measured step (raw scores, the log_softmax
    left out, or a log_softmax over another dim)."""
    steps = sorted(s for s, v in site.stats.items() if "in_max" in v and "lse_dev" in v)
    if not steps:
        return None
    if "LogBackward0" in (site.facts.get("producer") or []):
        return None  # a log of unnormalized values: TD509 judges its domain
    stats = [site.stats[s] for s in steps]
    highs = [v["in_max"] for v in stats]
    devs = [v["lse_dev"] for v in stats]
    if not all(math.isfinite(d) and d > LSE_TOL for d in devs):
        return None
    loss = _losses(site)
    seen = f"; observed loss {fmt(loss['first'])} -> {fmt(loss['last'])}" if loss else ""
    above = max(highs) > LOG_PROB_MAX
    values = f"values up to {fmt(max(highs))}, " if above else ""
    return tl.finding(
        title=f"`ctc_loss` at {site.source} gets {values}no log-probabilities over the classes "
        f"(each measured step has a row whose logsumexp over the last dim is {min(devs):.3g} "
        f"or more from 0){seen}",
        step=steps[0],
        evidence={
            "loss_fn": site.fn,
            "observed_loss": loss,
            "input_min": min(v.get("in_min", 0.0) for v in stats),
            "input_max": max(highs),
            "min_row_logsumexp_deviation": min(devs),
            "max_row_logsumexp_deviation": max(devs),
            "measured_steps": len(steps),
            "producer": site.facts.get("producer"),
            "input_shape": site.facts.get("input_shape"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"on all {len(steps)} measured steps some row's logsumexp over the last (class) "
        f"dim was {min(devs):.3g} or further from 0 (a log_softmax output's is 0 to 1e-5)"
        + (f", and values reached {fmt(max(highs))} (a log-probability is <= 0)" if above else "")
        + ": CTC reads its input as the log-probability of each class at each time step; on "
        "unnormalized scores the sum over alignments is no probability and the loss has no "
        "lower bound, so training moves the scores instead of learning the targets",
        fix="apply log_softmax over the class dim just before the loss "
        "(F.log_softmax(logits, dim=2) for (T, N, C) scores)",
        confidence=0.9,
    )


def _kl_div_probs(tl: TimelineView, site: Site) -> Finding | None:
    """kl_div given a softmax's output as its input, where log-probabilities belong
    (microsoft/ProDA#20, #43: `F.kl_div(F.softmax(student), teacher)`). A note: the loss is
    sum t log t - sum t p, minimized by p one-hot on the target's largest entry, so the student
    learns the target's argmax, not its distribution (measured on a 5-class distillation: true
    KL 5.45 against 0.0002 with log_softmax, the same argmax agreement, 0.99)."""
    producer = (site.facts.get("producer") or [None])[0]
    steps = _in_unit(site)
    if producer != "SoftmaxBackward0" or not steps:
        return None
    loss = _losses(site)
    seen = f"; observed loss {fmt(loss['first'])} -> {fmt(loss['last'])}" if loss else ""
    negative = bool(loss) and loss["min"] < -1e-6
    return tl.finding(
        title=f"`kl_div` at {site.source} gets probabilities (made by `SoftmaxBackward0`) as "
        f"its input, where log-probabilities belong{seen}",
        step=steps[0],
        evidence={
            "loss_fn": site.fn,
            "observed_loss": loss,
            "loss_went_negative": negative,
            "input_min": min(site.stats[s]["in_min"] for s in steps),
            "input_max": max(site.stats[s]["in_max"] for s in steps),
            "measured_steps": len(steps),
            "producer": site.facts.get("producer"),
            "input_shape": site.facts.get("input_shape"),
            "log_target": (site.facts.get("options") or {}).get("log_target"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"on all {len(steps)} measured steps the input of kl_div was a softmax's output "
        "(values in [0, 1]). kl_div(input, target) computes target * (log target - input): "
        "it reads its input as log-probabilities, so this loss is sum t log t - sum t p, not a "
        "KL divergence"
        + (" (it went below 0, which a KL cannot)" if negative else "")
        + ". It is minimized by p one-hot on the target's largest entry: the model learns the "
        "target's argmax, not its distribution (soft labels and a teacher's confidence are "
        "lost)",
        fix="pass log-probabilities: F.kl_div(F.log_softmax(student_logits, dim=1), "
        "teacher_probs, reduction='batchmean')",
        confidence=0.85,
        severity=Severity.INFO,
    )


def _sigmoid(tl: TimelineView, site: Site) -> Finding | None:
    steps = _in_unit(site)
    producer = (site.facts.get("producer") or [None])[0]
    if not steps or (producer not in SQUASHING and len(steps) < MIN_STEPS_BY_VALUE):
        return None
    shares = [v for _, v in site.values("t_mean")]
    share = sum(shares) / len(shares) if shares else 0.5
    floor = double_sigmoid_floor(min(max(share, 0.0), 1.0))
    loss = _losses(site)
    seen = f"; observed loss {fmt(loss['first'])} -> {fmt(loss['last'])}" if loss else ""
    made = f" (made by `{producer}`)" if producer in SQUASHING else ""
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets probabilities{made}, not logits: its loss "
        f"cannot go below {floor:.3f}{seen}",
        step=steps[0],
        evidence={
            "loss_fn": site.fn,
            "loss_floor": round(floor, 6),
            "positive_share": round(share, 6),
            "observed_loss": loss,
            "input_min": min(site.stats[s]["in_min"] for s in steps),
            "input_max": max(site.stats[s]["in_max"] for s in steps),
            "measured_steps": len(steps),
            "producer": site.facts.get("producer"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"on all {len(steps)} measured steps every input value lay in [0, 1]: "
        f"probabilities. {site.fn} applies a sigmoid again, so its outputs stay within "
        "[0.5, 0.73]: at best log(1 + 1/e) = 0.313 per positive and log 2 = 0.693 per "
        f"negative element, {floor:.3f} at the measured positive share {share:.2f}",
        fix="pass the logits (drop the sigmoid before the loss); apply sigmoid only for "
        "predictions",
        confidence=0.9 if producer in SQUASHING else 0.7,
        # Without a sigmoid in front, values in [0, 1] may be logits that happen to lie there
        # (an untrained discriminator's): said, not asserted.
        severity=None if producer in SQUASHING else Severity.INFO,
    )

"""TD511 labels-degenerate."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import loss_went
from ._loss_inputs import Site, finite, label_histograms, loss_sites

MIN_LABELS = 64  # labels seen before "never used" or "always the same" is a verdict
MIN_STEPS = 4


@rule(
    code="TD511",
    name="labels-degenerate",
    severity=Severity.ERROR,
    summary="Class labels that cannot train the classifier: constant, out of range, 1-based "
    "or not integers; multi-hot rows given to cross-entropy as class probabilities; binary "
    "cross-entropy targets outside [0, 1].",
    requires=("loss_inputs.stats", "loss_inputs.labels", "loss.backward"),
    events=("loss_input", "loss_targets_out_of_range"),
    facts=("outcome",),
    priority=7,
)
def labels_degenerate(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    The class-index targets of `cross_entropy` / `nll_loss` (functional or module form):
    labels outside the model's output range (`y >= C` or negative, `ignore_index` excepted);
    labels that are floats where a class index is expected; every label identical over the
    run; class 0 never used while the largest label is C - 1 (1-based labels with one extra
    output). Float targets of the input's shape are class probabilities: rows of 0/1 values
    that sum to 2 or more are multi-hot labels (several classes per example) that
    `cross_entropy` reads as one distribution. Targets that are the argmax of the very logits
    they are scored against (`criterion(outputs, outputs.argmax(1))`), from a first call where
    the model is still near chance: the labels were made from the predictions. One output of
    an F-way layer (`out[:, 0]`) regressed by MSE/L1/Huber, as the whole loss, onto whole-number
    targets running exactly over 0..F-1: class indices read as numbers, the other outputs
    never trained.

    ## Why it matters
    Out-of-range labels crash (CPU) or trigger a device-side assert (CUDA) far from the data
    code; float labels crash with a dtype error; constant labels train a model that predicts
    one class with a loss going to 0; 1-based labels waste an output and shift every class by
    one, which a good-looking loss does not reveal. A binary cross-entropy target above 1 or
    below 0 has no minimum: the loss goes negative and falls without end as the logits grow,
    so it looks like training while the model learns to output ever larger values.
    The model's own argmax as its target teaches it nothing of the data: the loss falls to 0
    as whatever it predicts grows more confident, and accuracy on the real labels stays at
    chance. Multi-hot rows given to `cross_entropy` (accepted since torch 1.10 as "probabilities")
    train one softmax to spread its single unit of probability over the k labels: no output
    can say "yes" to two labels at once, the loss cannot fall below the entropy of each row
    (ln k), and thresholding the outputs at 0.5 misses most of them.

    ## How it is measured
    On the first and sampled steps the loss-inputs probe keeps a label histogram per call
    site for up to 64 classes (`scatter_add_` on the device, summed over micro-batches, read
    back in batches), the labels' min and max (ignore_index masked) and the target's dtype
    and shape against the input's class count; for float targets, their min and max. On the
    1st, 2nd, 4th, ... call of a site, the share of the targets (first 64 examples) equal to
    the argmax of the input over its class dim, read beside the site's loss and the backward's
    loss of the same step (the whole objective, or one term of it). Out-of-range class targets
    are also counted before the loss runs, from the script's first loss call (zero-code mode
    attaches only at the first backward, which such a loss never reaches) and on the structural
    steps, at most 64 calls, one read back each: the offending values and their counts, the
    class count, the line; reported even when the run never got past that first call, and
    what a CUDA device-side assert (raised later, elsewhere) would hide.

    ## Example
    ```python
    y = labels + 1                        # classes 1..K
    head = nn.Linear(64, K + 1)           # one more output "to make room"
    loss = F.cross_entropy(head(h), y)
    ```

    ## Fix
    ```python
    y = labels - labels.min()            # 0-based class indices
    head = nn.Linear(64, K)
    ```

    ## Known false positives
    Contrastive logits assembled as `cat([l_pos, l_neg])` with every label 0 (the positive's
    column) are not constant labels and are not reported. A class that is legitimately absent
    from the training data (a reserved padding, BOS or
    background id) reads as a 1-based labelling, which is why that case is reported as info; a deliberate one-class warm-up reads as constant labels. Binary targets a little outside [0, 1] (a
    0/1 mask resized with a bicubic kernel overshoots its edges) are a note, not an error.
    Self-training on the model's own hard pseudo-labels of the same forward (Lee's
    Pseudo-Label) is the own-argmax pattern on purpose: a note when it is one term of the
    loss; an error only when it is the whole loss of a model still near chance.
    """
    checked = set()
    for e in tl.events("loss_targets_out_of_range"):
        checked.add((e.get("fn"), e.get("source")))
        yield _targets_checked(tl, e)
    hists = label_histograms(tl)
    for site in loss_sites(tl).values():
        f = (
            _binary_targets_outside_01(tl, site)
            or _multi_hot_probabilities(tl, site)
            or _float_labels(tl, site)
            or (None if (site.fn, site.source) in checked else _out_of_range(tl, site))
            or _own_predictions(tl, site)
            or _class_ids_regressed(tl, site)
            or _from_histogram(tl, site, hists.get(site.id, []))
        )
        if f is not None:
            yield f


def _input_tokens(site: Site) -> bool:
    """Whether the site's targets are, for the most part, token ids that an nn.Embedding of
    the same graph reads (at the same position, or one position on: a decoder's teacher
    forcing, a language model's shifted inputs; the loss-inputs probe's `ids_same` and
    `ids_next`): the classes are then the model's input vocabulary, whose ids read but never
    predicted (a start token) are not a 1-based labelling."""
    return any(v >= 0.5 for stat in ("ids_same", "ids_next") for _, v in site.values(stat))


def _float_labels(tl: TimelineView, site: Site) -> Finding | None:
    for e in site.events:
        shape, tshape = e.get("input_shape") or [], e.get("target_shape") or []
        if e.get("classes") and e.get("target_float") and len(tshape) == len(shape) - 1:
            return tl.finding(
                title=f"`{site.fn}` at {site.source} gets {e.get('target_dtype')} labels of "
                f"shape {tuple(tshape)} where class indices (int64) are expected",
                step=e.get("step"),
                evidence={
                    "loss_fn": site.fn,
                    "target_dtype": e.get("target_dtype"),
                    "target_shape": tshape,
                    "input_shape": shape,
                },
                where=Where(op=site.fn, source=site.source),
                cause="a target with one dimension less than the input is read as class "
                f"indices, which must be integers; {e.get('target_dtype')} raises (or, "
                "converted carelessly, truncates fractional labels)",
                fix="pass `y.long()` class indices (or probabilities of the input's shape)",
                confidence=0.9,
            )
    return None


_BINARY = ("binary_cross_entropy", "binary_cross_entropy_with_logits")


def multi_hot_rows(site: Site) -> tuple[int, float, float] | None:
    """(first step, largest row sum, share of rows with several labels) of a cross-entropy
    whose float targets of the input's shape are 0/1 rows that sum to 2 or more (multi-hot
    labels read as class probabilities); None when every measured row sums to 1 or less, or a
    value lies outside [0, 1] (another encoding, not labels)."""
    if site.fn != "cross_entropy" or not site.facts.get("target_float"):
        return None
    highs = [(s, v) for s, v in site.values("t_rowsum_max") if v >= 2.0 - 1e-3]
    if not highs:
        return None
    lows, tops = dict(site.values("t_min")), dict(site.values("t_max"))
    if any(lows.get(s, 0.0) < 0.0 or tops.get(s, 1.0) > 1.0 for s, _ in highs):
        return None
    fracs = dict(site.values("t_frac"))  # soft values are not 0/1 labels: not told apart
    if any(fracs.get(s, 0.0) > 0.0 for s, _ in highs):
        return None
    multi = [v for _, v in site.values("t_rows_multi")]
    return highs[0][0], max(v for _, v in highs), max(multi) if multi else 0.0


def _multi_hot_probabilities(tl: TimelineView, site: Site) -> Finding | None:
    measured = multi_hot_rows(site)
    if measured is None:
        return None
    step, top, share = measured
    lows = [v for _, v in site.values("t_rowsum_min")]
    empty = min(lows) if lows else None
    losses = site.losses()
    went = loss_went(losses)
    none = "; rows with no label sum to 0 and add nothing to the loss" if empty == 0 else ""
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets multi-hot targets: rows of 0/1 that sum to "
        f"up to {top:.0f} ({share:.0%} of a batch's rows hold several labels), read as class "
        "probabilities",
        # Softmax over multi-hot rows still ranks the labels (a known multi-label recipe when
        # the rows are normalized): a warning, not the rule's error.
        severity=Severity.WARNING,
        step=step,
        evidence={
            "loss_fn": site.fn,
            "target_shape": site.facts.get("target_shape"),
            "row_sum_max": top,
            "row_sum_min": empty,
            "rows_with_several_labels": share,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"each target row sums to its number of labels, not to 1 (up to {top:.0f} "
        f"measured{none}): cross-entropy's softmax has one unit of probability to spread over the "
        "classes, so an example with k labels is trained towards 1/k on each and no output can "
        "say yes to two labels; this is a multi-label task trained as a single-label one" + went,
        fix="use `nn.BCEWithLogitsLoss()` on the raw logits (one independent yes/no per label) "
        "and `torch.sigmoid(logits) > 0.5` to predict; if one class per example was meant, "
        "pass `y.argmax(1)`",
        confidence=0.9,
    )


def _binary_targets_outside_01(tl: TimelineView, site: Site) -> Finding | None:
    """A BCE target is a probability: outside [0, 1] the loss has no minimum (torch checks it
    for binary_cross_entropy only). Any value out is reported; its severity says whether it is
    another encoding of the labels or an interpolation's overshoot."""
    if site.fn not in _BINARY or not site.facts.get("target_float"):
        return None
    lows, highs = dict(site.values("t_min")), dict(site.values("t_max"))
    out = [s for s in sorted(highs) if lows.get(s, 0.0) < 0.0 or highs[s] > 1.0]
    if out:
        # The extremes over every measured step: the first step out may be the mildest.
        step = out[0]
        lo, hi = min(lows.get(s, 0.0) for s in out), max(highs[s] for s in out)
        losses = site.losses()
        negative = [v for v in losses if v < 0]
        scaled = hi > 1.0 and float(hi).is_integer() and hi <= 255
        ev: dict[str, Any] = {
            "loss_fn": site.fn,
            "target_min": lo,
            "target_max": hi,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "negative_loss_steps": len(negative),
        }
        went = loss_went(losses)
        # Another encoding (0/255 masks, -1/1 labels, counts) or a loss measured below 0: an
        # error. A small overshoot (a mask resized with a bicubic kernel, 1.03) bends the loss
        # of a few pixels only: said, as a note.
        encoded = hi >= 2.0 or lo <= -1.0 or bool(negative)
        return tl.finding(
            title=f"`{site.fn}` at {site.source} gets targets in [{lo:.4g}, {hi:.4g}]: a "
            "binary cross-entropy target must lie in [0, 1]",
            severity=Severity.ERROR if encoded else Severity.INFO,
            step=step,
            evidence=ev,
            where=Where(op=site.fn, source=site.source),
            cause=f"targets up to {hi:.4g} and down to {lo:.4g} are not probabilities: "
            "-[y·log σ(x) + (1-y)·log(1-σ(x))] has no minimum when y > 1 or y < 0, so the "
            "loss turns negative and keeps falling as the logits grow without bound" + went,
            fix=(
                "scale the masks to 0/1 where they are loaded (`mask / 255` or "
                "`(mask > 127).float()`)"
                if scaled
                else "give the loss 0/1 (or [0, 1]) targets: do not pass the mask through the "
                "image's Normalize, clamp or rescale it"
                if encoded
                else "clamp the resized targets to [0, 1] (`mask.clamp(0, 1)`), or resize masks "
                "with nearest-neighbour interpolation"
            ),
            confidence=0.95,
        )
    return None


def _out_of_range(tl: TimelineView, site: Site) -> Finding | None:
    classes = site.classes
    if not classes or site.facts.get("target_float"):
        return None  # float targets are probabilities (or TD511's float-label case)
    lows, highs = dict(site.values("t_min")), dict(site.values("t_max"))
    for step in sorted(highs):
        lo, hi = lows.get(step, 0), highs[step]
        if hi >= classes or lo < 0:
            return tl.finding(
                title=f"`{site.fn}` at {site.source} gets labels in [{lo:.0f}, {hi:.0f}] "
                f"for a model with {classes} outputs (valid: 0..{classes - 1})",
                step=step,
                evidence={"loss_fn": site.fn, "label_min": lo, "label_max": hi, "classes": classes},
                where=Where(op=site.fn, source=site.source),
                cause=f"class indices must lie in [0, {classes - 1}]: torch raises 'Target "
                f"{hi:.0f} is out of bounds' on CPU and a device-side assert on CUDA",
                fix=f"map the labels to 0..C-1 (1-based labels: y - 1), or give the head "
                f"{int(hi) + 1} outputs if there really are that many classes",
                confidence=0.95,
            )
    return None


def _targets_checked(tl: TimelineView, e: dict[str, Any]) -> Finding:
    """Out-of-range class targets counted before the loss ran (probes/loss_targets.py): the
    loss raised on them (CPU), or tripped a device-side assert (CUDA)."""
    fn, classes, ignore = e.get("fn"), int(e.get("classes") or 0), e.get("ignore_index")
    values = [tuple(v) for v in e.get("values") or []]
    bad, n = int(e.get("out_of_range") or 0), int(e.get("targets") or 0)
    named = ", ".join(f"{v} ({c}x)" for v, c in values)
    outcome = tl.facts.get("outcome") or {}
    raised = str(outcome.get("exception") or "") if outcome.get("ended") == "exception" else ""
    said = ""
    if raised:
        said = f"; the run then raised {raised.splitlines()[0][:160]}"
        if "device-side assert" in raised or "CUDA error" in raised:
            said += " (the CUDA kernel's assert on these targets)"
    only = values[0][0] if len(values) == 1 else None
    if only is not None and (only >= classes or only < 0) and only != classes:
        # One value outside the classes: a void/padding label (255 in VOC-style masks, -1).
        fix = (
            f"if {only} marks pixels/tokens to skip (a void or padding label), pass "
            f"`ignore_index={only}` to the loss (`nn.CrossEntropyLoss(ignore_index={only})`); "
            f"otherwise map the labels to 0..{classes - 1}"
        )
    elif only == classes and (e.get("target_min") or 0) >= 1:
        fix = (
            f"the labels of this call run from {e.get('target_min')} to {classes} (0 absent, "
            f"{classes} present): if they are 1-based, use `y - 1` (0-based class indices)"
        )
    elif len(values) > 2 and (e.get("target_max") or 0) in (254, 255):
        fix = (
            "the targets look like raw 8-bit pixel values (up to "
            f"{e.get('target_max')}): load the masks as class indices 0..{classes - 1} "
            "(a palette lookup, or `mask // 255` for a 0/255 binary mask)"
        )
    else:
        fix = (
            f"map the labels to 0..{classes - 1}, or give the layer before the loss as many "
            f"outputs as there are classes (the labels reach {e.get('target_max')})"
        )
    device = str(e.get("device") or "")
    return tl.finding(
        title=f"`{fn}` at {e.get('source')} got {bad} of {n} class targets outside "
        f"0..{classes - 1} ({classes} classes in the input's dim 1): {named}{said}",
        step=e.get("step"),
        evidence={
            "loss_fn": fn,
            "classes": classes,
            "out_of_range": bad,
            "targets": n,
            "values": [list(v) for v in values],
            "label_min": e.get("target_min"),
            "label_max": e.get("target_max"),
            "ignore_index": ignore,
            "input_shape": e.get("input_shape"),
            "target_shape": e.get("target_shape"),
            "device": device,
            "exception": raised or None,
        },
        where=Where(op=fn, source=e.get("source")),
        cause=f"class indices must lie in [0, {classes - 1}] (ignore_index={ignore} excepted); "
        f"counted on the targets before the loss ran: {named}. torch raises 'Target "
        f"{values[0][0] if values else '?'} is out of bounds' on CPU and a device-side assert "
        "on CUDA (reported later, at another line)",
        fix=fix,
        confidence=0.97,
    )


def _whole_objective(tl: TimelineView, losses: dict[int, float], steps: list[int]) -> bool:
    """Whether the loss measured at a site is the backward's whole loss on the given steps
    (a backward root of the same value at each), not one term of a larger objective."""
    roots = dict(tl.series("loss.backward"))
    whole = [
        any(
            isinstance(r, int | float) and abs(r - losses[s]) <= 1e-4 * max(1.0, abs(r))
            for r in (roots.get(s) or [])
        )
        for s in steps
        if s in losses and s in roots
    ]
    return bool(whole) and all(whole)


_REGRESSION = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")


def _class_ids_regressed(tl: TimelineView, site: Site) -> Finding | None:
    """One column of a layer with F >= 3 outputs (`out[:, 0]`) regressed onto integer
    targets that run exactly over 0..F-1, by a loss that is the backward's whole loss: the
    class indices of an F-way head read as numbers, and the other F - 1 outputs (the ones an
    argmax reads) never trained."""
    if site.fn not in _REGRESSION or not site.facts.get("target_float"):
        return None
    lay = site.facts.get("layout") or {}
    width, sel = lay.get("head_features"), lay.get("selected")
    if not isinstance(width, int) or width < 3 or not sel or sel[0] != 1:
        return None
    if lay.get("head_dim") is not None or len(site.facts.get("input_shape") or []) != 1:
        return None
    lows, highs, fracs = site.values("t_min"), site.values("t_max"), site.values("t_frac")
    if len(highs) < 2 or any(v > 0 for _, v in fracs):
        return None
    if min(v for _, v in lows) != 0 or max(v for _, v in highs) != width - 1:
        return None
    losses = dict(site.values("loss"))
    if not _whole_objective(tl, losses, [s for s, _ in highs]):
        return None  # other losses may train the other outputs
    module = lay.get("head_module")
    head = f"`{module}`" if module else "the layer"
    went = sorted(losses.items())
    curve = loss_went([v for _, v in went])
    return tl.finding(
        title=f"`{site.fn}` at {site.source} regresses output {sel[1]} of the {width} outputs "
        f"of {head} onto integer targets 0..{width - 1}: class indices read as numbers",
        severity=Severity.WARNING,
        step=highs[0][0],
        evidence={
            "loss_fn": site.fn,
            "outputs": width,
            "output_used": sel[1],
            "head_module": module,
            "target_min": 0,
            "target_max": width - 1,
            "loss_first": went[0][1] if went else None,
            "loss_last": went[-1][1] if went else None,
        },
        where=Where(op=site.fn, module=module, source=site.source),
        cause=f"the targets are whole numbers running exactly over 0..{width - 1}, one per "
        f"output of {head}, and the loss, the whole objective, reads output {sel[1]} alone: "
        f"the class indices are regressed as numbers (class 3 is 'three times class 1'), and "
        f"the other {width - 1} outputs, which an argmax over the {width} reads, get no "
        "gradient at all" + curve,
        fix="train the head as a classifier: `loss = F.cross_entropy(output, y.long())` on all "
        f"{width} outputs, and predict with `output.argmax(1)`",
        confidence=0.8,
    )


OWN_MIN_CALLS = 2  # measured calls (1st, 2nd, 4th, ... of the site)
OWN_MIN_TARGETS = 64  # targets compared over those calls: chance agreement is (1/C)^64
OWN_SAME = 0.999


def _own_predictions(tl: TimelineView, site: Site) -> Finding | None:
    """Class targets that are the argmax of the very input they are compared with, on every
    measured call, from a first call where the model was still near chance (its loss at least
    half of ln C): the labels were made from the predictions, not read from the data. A model
    that already fits its labels (a resumed run, a pretrained model adapted on its own
    pseudo-labels) agrees with them at a low loss, and is not this."""
    classes = site.classes
    shares = site.values("own_argmax")
    if not classes or classes < 2 or len(shares) < OWN_MIN_CALLS:
        return None
    if any(v < OWN_SAME for _, v in shares):
        return None
    plain = dict(site.values("own_plain"))
    if plain.get(shares[0][0], 0.0) < 0.5:
        return None  # constant or arange-like targets: a contrastive loss's positives
    counts = dict(site.values("own_n"))
    compared = sum(counts.get(s, 0.0) for s, _ in shares)
    if compared < OWN_MIN_TARGETS:
        return None
    losses = dict(site.values("loss"))
    first = shares[0][0]
    chance = math.log(classes)
    if not finite(losses.get(first, float("nan"))) or losses[first] < 0.5 * chance:
        return None
    # The whole objective, or one term of it (self-training on unlabelled data beside a
    # supervised loss written by hand).
    alone = _whole_objective(tl, losses, [s for s, _ in shares])
    went = sorted(losses.items())
    curve = loss_went([v for _, v in went])
    return tl.finding(
        title=f"`{site.fn}` at {site.source} is given the model's own predictions as its "
        f"targets: every one of {int(compared)} targets compared equals the argmax of the "
        "logits it is scored against",
        severity=Severity.ERROR if alone else Severity.INFO,
        step=first,
        evidence={
            "loss_fn": site.fn,
            "classes": classes,
            "share_equal_to_own_argmax": min(v for _, v in shares),
            "targets_compared": int(compared),
            "measured_calls": len(shares),
            "first_loss": losses[first],
            "chance_loss": chance,
            "whole_objective": alone,
            "loss_first": went[0][1] if went else None,
            "loss_last": went[-1][1] if went else None,
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"on every measured call 100% of the targets equal `argmax` of the input over "
        f"its {classes} classes, from step {first}, where the model was still near chance "
        f"(loss {losses[first]:.3g}, ln {classes} = {chance:.3g}): the targets are made from "
        "the predictions, so they carry nothing of the data; the loss falls to 0 by making "
        "whatever the model predicts more confident, and accuracy on the real labels stays at "
        "chance"
        + curve
        + (
            ""
            if alone
            else "; this loss is one term of the objective (self-training on the model's own "
            "pseudo-labels beside another loss does this on purpose)"
        ),
        fix="score the logits against the dataset's labels: `loss = criterion(outputs, labels)`; "
        "`outputs.argmax(1)` is the prediction, for the accuracy only",
        confidence=0.95 if alone else 0.5,
    )


def _from_histogram(
    tl: TimelineView, site: Site, rows: list[tuple[int, list[float]]]
) -> Finding | None:
    classes = site.classes
    if not classes or classes < 2 or len(rows) < MIN_STEPS:
        return None
    totals = [0.0] * classes
    for _, counts in rows:
        for c, n in enumerate(counts[:classes]):
            totals[c] += n
    seen = sum(totals)
    if seen < MIN_LABELS:
        return None
    used = [c for c, n in enumerate(totals) if n > 0]
    ev = {
        "loss_fn": site.fn,
        "classes": classes,
        "labels_seen": int(seen),
        "steps": len(rows),
        "counts": [int(n) for n in totals],
    }
    # Logits assembled by concatenation (`cat([l_pos, l_neg]) / T`, MoCo's and SimCLR's
    # InfoNCE) with every label 0: the positive's column, not a class the data lacks.
    assembled = "CatBackward0" in (site.facts.get("producer") or [])[:2]
    if len(used) == 1 and not (assembled and used[0] == 0):
        # The loss's ignore_index is one of the head's classes (a yes/no head given the
        # criterion of a padded token loss, `NLLLoss(ignore_index=0)`): the labels of that
        # class are dropped before they are counted, so the one class left is the loss's doing.
        ignore = (site.facts.get("options") or {}).get("ignore_index")
        if isinstance(ignore, int) and 0 <= ignore < classes and ignore != used[0]:
            ev["ignore_index"] = ignore
            return tl.finding(
                title=f"every one of {int(seen)} labels `{site.fn}` at {site.source} scores "
                f"over {len(rows)} steps is class {used[0]}: its ignore_index={ignore} is one "
                f"of the {classes} classes",
                step=rows[0][0],
                evidence=ev,
                where=Where(op=site.fn, source=site.source),
                cause=f"`ignore_index={ignore}` leaves every label {ignore} out of the loss "
                f"(they are not in these counts), so the {classes}-output head is trained on "
                f"class {used[0]} alone: it learns to always predict it and the loss goes to 0 "
                f"while its accuracy on the real labels stays at chance",
                fix=f"give this head a loss without ignore_index (a second criterion, e.g. "
                f"`nn.NLLLoss()` / `nn.CrossEntropyLoss()`); keep ignore_index={ignore} only "
                "for the loss whose targets use that id as padding",
                confidence=0.9,
            )
        return tl.finding(
            title=f"every one of {int(seen)} labels fed to `{site.fn}` at {site.source} over "
            f"{len(rows)} steps is class {used[0]}",
            step=rows[0][0],
            evidence=ev,
            where=Where(op=site.fn, source=site.source),
            cause=f"the model has {classes} outputs but sees one class only: it learns to "
            "always predict it and the loss goes to 0 without learning anything",
            fix="check the label column/decoding (a label read from the wrong field, a "
            "filter that kept one class, labels overwritten in the loop)",
            confidence=0.9,
        )
    # Class 0 as the loss's ignore_index (padding): never a label by design.
    pad = (site.facts.get("options") or {}).get("ignore_index") == 0
    if (
        classes >= 3
        and not pad
        and totals[0] == 0
        and totals[classes - 1] > 0
        and len(used) == classes - 1
        and not _input_tokens(site)
    ):
        return tl.finding(
            title=f"class 0 of {classes} outputs is never a label of `{site.fn}` at "
            f"{site.source}: its {int(seen)} labels run 1..{classes - 1}",
            step=rows[0][0],
            evidence=ev,
            where=Where(op=site.fn, source=site.source),
            cause="labels run from 1 to C-1 and class 0 never occurs. Either the labels are "
            "1-based with one extra output added to make them fit (the extra logit is only "
            "ever pushed down and every class index is off by one against the dataset's "
            "class names), or id 0 is reserved for something that is never a target "
            "(padding, a start token, background)",
            fix="if the labels are 1-based, use 0-based labels (y - 1) and C - 1 outputs; if "
            "class 0 is a reserved id that never occurs as a target, ignore this note",
            confidence=0.75,
            # The same counts fit a reserved id (padding, BOS, background) that never occurs:
            # a note, not a verdict.
            severity=Severity.INFO,
        )
    return None

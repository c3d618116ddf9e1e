"""TD518 padding-in-loss."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import loss_sites


@rule(
    code="TD518",
    name="padding-in-loss",
    severity=Severity.WARNING,
    summary="Sequence targets padded with a token the loss does not ignore: the model is "
    "trained to predict the padding.",
    requires=("loss_inputs.stats",),
    events=("loss_input",),
    priority=52,
)
def padding_in_loss(
    tl: TimelineView,
    *,
    min_share: float = 0.2,
    min_rows: float = 0.5,
    min_observed: int = 2,
    min_vocab: int = 16,
) -> Iterator[Finding]:
    """
    ## What it detects
    A cross-entropy (or NLL) over (batch, time) class targets where most rows end with a run
    of one same value, the runs' lengths vary from row to row, the value appears nowhere
    else in the targets (padding, not a frequent class), and the loss's `ignore_index` is
    another value (its default, -100). Warning when the padding is at least `min_share` (20%)
    of the targets, info below.

    ## Why it matters
    Every padded position counts in the loss as a token to predict. Padding is easy to
    predict (it follows the end of the sequence), so a large part of the loss and of the
    gradient goes to learning it: the loss looks low while the real tokens are learned
    slowly, and a model that learned "after a while, pad" ends its generations early or
    emits padding. The mean is also taken over the padded positions, so longer padding
    shrinks the real tokens' gradient.

    ## How it is measured
    On the sampled steps, the loss-input probe looks at the targets of each class loss whose
    targets are (batch, time): the most frequent last target of the rows, the share of rows
    that end with it, the length of each row's trailing run of it, and how often it appears
    outside those runs. Medians over the observed calls; `ignore_index` from the call.

    ## Example
    ```python
    criterion = nn.CrossEntropyLoss()                        # ignore_index=-100
    loss = criterion(logits.permute(0, 2, 1), caps[:, 1:])   # caps padded with [PAD] = 0
    ```

    ## Fix
    ```python
    criterion = nn.CrossEntropyLoss(ignore_index=pad_token_id)
    # or set the padded labels to -100 (what Hugging Face's collators do)
    ```

    ## Known false positives
    A model trained on purpose to emit padding after the end token (fixed-length outputs).
    Over fewer than `min_vocab` (16) classes a real class can end every row by design (a state
    that stays on once reached, the largest value of a sorted output): info only there.
    Not seen: targets flattened before the loss (`view(-1)`), whose rows the probe cannot
    tell apart, left padding, and `reduction='none'`, whose per-token losses the caller
    reduces (most often times the padding mask, over the real tokens' count).
    """
    for site in loss_sites(tl).values():
        if site.fn not in ("cross_entropy", "nll_loss"):
            continue
        rows = [v for _, v in site.values("pad_rows")]
        if len(rows) < min_observed:
            continue
        pads = {v for _, v in site.values("pad_val")}
        if len(pads) != 1:
            continue  # a different "last token" from call to call: not one pad id
        pad = int(next(iter(pads)))
        if (site.facts.get("options") or {}).get("reduction") in (0, "none"):
            continue  # per-token losses: the caller reduces them, the padding masked out or not
        ignore = (site.facts.get("options") or {}).get("ignore_index")
        ignore = -100 if ignore is None else ignore
        if pad == ignore:
            continue
        share = statistics.median(v for _, v in site.values("pad_share"))
        inner = max(v for _, v in site.values("pad_inner"))
        rmin = min(v for _, v in site.values("pad_rmin"))
        rmax = max(v for _, v in site.values("pad_rmax"))
        ends = statistics.median(rows)
        if ends < min_rows or rmax - rmin < 2 or share < 0.05:
            continue
        if inner > 0.02 * share:
            continue  # the value also appears inside the rows: a frequent class, not padding
        classes = site.facts.get("classes")
        vocab = classes is None or classes >= min_vocab
        # Over a handful of classes a real one can form the trailing runs (an event that stays
        # on, the largest value of a sorted sequence): padding cannot be told apart there.
        severity = Severity.WARNING if share >= min_share and vocab else Severity.INFO
        shape = site.facts.get("target_shape")
        yield tl.finding(
            title=(
                f"`{site.fn}` at {site.source}: {share:.0%} of its targets are padding "
                f"(value {pad}) that the loss does not ignore (ignore_index={ignore})"
                if vocab
                else f"`{site.fn}` at {site.source}: {share:.0%} of its targets are trailing "
                f"runs of {pad}, a value found nowhere else: padding, or a class that ends "
                f"every row by design (over {classes} classes the two look the same)"
            ),
            step=site.values("pad_rows")[0][0],
            evidence={
                "pad_value": pad,
                "ignore_index": ignore,
                "padding_share": share,
                "rows_ending_in_padding": ends,
                "padding_run": [int(rmin), int(rmax)],
                "target_shape": shape,
                "observed_calls": len(rows),
            },
            where=Where(source=site.source),
            cause=f"{ends:.0%} of the target rows {tuple(shape) if shape else ''} end with a run "
            f"of {pad} ({int(rmin)} to {int(rmax)} positions, varying with each row's length) "
            f"and {pad} appears nowhere else: padding. The loss ignores {ignore}, so those "
            f"positions, {share:.0%} of the targets, are trained as tokens to predict: the "
            "model learns to predict the padding and the real tokens get a smaller share of "
            "the gradient",
            fix=f"pass ignore_index={pad} to the loss (nn.CrossEntropyLoss(ignore_index={pad})), "
            "or set the padded labels to -100 before the loss",
            severity=severity,
            confidence=0.7 if severity is Severity.WARNING else 0.4,
        )

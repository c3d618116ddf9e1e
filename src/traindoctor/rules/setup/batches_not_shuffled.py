"""TD512 batches-not-shuffled."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import label_histograms, loss_sites

MIN_STEPS = 6  # sampled batches (steps 1-3, then every sampling interval)
MIN_BATCH = 4  # labels per step below which one class per batch is no evidence
SINGLE_SHARE = 0.5


@rule(
    code="TD512",
    name="batches-not-shuffled",
    severity=Severity.WARNING,
    summary="Batches of a single class in sequence: class-sorted data without shuffling.",
    requires=("loss_inputs.labels",),
    priority=30,
)
def batches_not_shuffled(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Most training batches of a classification loss hold a single class, and the classes
    come in runs: the data is sorted by class and the loader does not shuffle
    (`DataLoader(..., shuffle=False)` over a class-ordered dataset).

    ## Why it matters
    Each run of single-class batches pulls the model to predict that class; the next run
    undoes it. The loss oscillates, BatchNorm statistics follow the current class, and the
    model ends biased to the last classes seen.

    ## How it is measured
    On sampled steps (1-3, then every sampling interval) the loss-inputs probe keeps a label
    histogram per call site (class-index targets of at most 64 classes, on the device, read
    back in batches). Over at least 6 sampled batches with at least 4 labels each, the rule
    counts the batches whose labels are all one class and the runs of the same class.

    ## Example
    ```python
    loader = DataLoader(dataset_sorted_by_class, batch_size=32, shuffle=False)
    ```

    ## Fix
    ```python
    loader = DataLoader(dataset_sorted_by_class, batch_size=32, shuffle=True)
    ```

    ## Known false positives
    A curriculum that is meant to present one class at a time, or a segmentation task whose
    images each hold one class, are reported too.
    """
    sites = loss_sites(tl)
    for sid, rows in label_histograms(tl).items():
        rows = [(s, c) for s, c in rows if sum(c) >= MIN_BATCH]
        if len(rows) < MIN_STEPS:
            continue
        singles = []
        for _, counts in rows:
            used = [c for c, n in enumerate(counts) if n > 0]
            singles.append(used[0] if len(used) == 1 else None)
        share = sum(c is not None for c in singles) / len(singles)
        classes_seen = {c for c in singles if c is not None}
        if share < SINGLE_SHARE or len(classes_seen) < 2:
            continue
        runs = _runs(singles)
        site = sites.get(sid)
        source = site.source if site else None
        fn = site.fn if site else "the loss"
        order = [c for c, _ in runs][:12]
        yield tl.finding(
            title=f"{share:.0%} of {len(rows)} batches fed to `{fn}`"
            + (f" at {source}" if source else "")
            + f" hold a single class, in runs (classes in order: {order})",
            step=rows[0][0],
            evidence={
                "single_class_share": round(share, 4),
                "steps": len(rows),
                "runs": [[c, n] for c, n in runs[:20]],
                "mean_run_length": round(sum(n for _, n in runs) / max(len(runs), 1), 2),
                "classes_in_single_batches": sorted(classes_seen),
            },
            where=Where(op=fn if site else None, source=source),
            cause="consecutive batches hold one class each: the data is ordered by class and "
            "not shuffled, so each run pulls the model towards one class and the next undoes it",
            fix="shuffle the training data (DataLoader(..., shuffle=True) or a RandomSampler)",
            confidence=0.85,
        )


def _runs(singles: list[int | None]) -> list[tuple[int | None, int]]:
    runs: list[tuple[int | None, int]] = []
    for c in singles:
        if runs and runs[-1][0] == c and c is not None:
            runs[-1] = (c, runs[-1][1] + 1)
        else:
            runs.append((c, 1))
    return [r for r in runs if r[0] is not None]

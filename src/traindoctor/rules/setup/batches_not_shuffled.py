"""TD512 batches-not-shuffled."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import label_histograms, loss_sites

TOP = "loss_inputs.top_label"
MIN_STEPS = 6  # observed batches (every step up to 32, then every sampling interval)
MIN_BATCH = 4  # labels per step below which one class per batch is no evidence
SINGLE_SHARE = 0.5
NEARLY = 0.9  # a batch whose top class holds this share of its labels is "single-class"


@rule(
    code="TD512",
    name="batches-not-shuffled",
    severity=Severity.WARNING,
    summary="Batches of a single class in sequence: class-sorted data without shuffling.",
    requires=("loss_inputs.labels", "loss_inputs.top_label", "loss_inputs.stats"),
    events=("data_loader", "loss_input"),
    priority=30,
)
def batches_not_shuffled(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Most training batches of a classification loss hold a single class (or nearly), and the
    classes come in runs: the data is sorted by class and the loader does not shuffle
    (`DataLoader(..., shuffle=False)` over a class-ordered dataset).

    ## Why it matters
    Each run of single-class batches pulls the model to predict that class; the next run
    undoes it. The loss oscillates, BatchNorm statistics follow the current class, and the
    model ends biased to the last classes seen.

    ## How it is measured
    On every step up to 32, then on sampled steps, the loss-inputs probe keeps a label
    histogram per call site (class-index targets of at most 64 classes, on the device, read
    back in batches); over more classes (an ImageNet head of 1000), only each batch's most
    frequent class, its count and the number of labels. Over at least 6 observed batches with at least 4 labels each, the rule
    counts the batches whose labels are (nearly: at least 90%) one class, and the runs of
    consecutive batches of the same class. It fires when at least half the batches are such
    and at least two different classes have them (class imbalance gives single-class batches
    of the majority class only).

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
    for sid, rows in _batches(tl).items():
        rows = [(s, top, n) for s, top, n in rows if n >= MIN_BATCH]
        if len(rows) < MIN_STEPS:
            continue
        singles = [top for _, top, _ in rows]
        share = sum(c is not None for c in singles) / len(singles)
        classes_seen = {c for c in singles if c is not None}
        if share < SINGLE_SHARE or len(classes_seen) < 2:
            continue
        runs = _runs(singles)
        site = sites.get(sid)
        source = site.source if site else None
        fn = site.fn if site else "the loss"
        order = [c for c, _ in runs][:12]
        # The DataLoaders seen in the user's frames that read their data set in order.
        in_order = [
            e.get("name")
            for e in tl.events("data_loader")
            if e.get("sampler") == "SequentialSampler" and e.get("name")
        ]
        named = (
            f" (`{in_order[0]}` reads its data set in order: SequentialSampler)" if in_order else ""
        )
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
                "sequential_loaders": in_order,
            },
            where=Where(op=fn if site else None, source=source),
            cause="consecutive batches hold one class each: the data is ordered by class and "
            f"not shuffled{named}, so each run pulls the model towards one class and the next "
            "undoes it",
            fix="shuffle the training data (DataLoader(..., shuffle=True) or a RandomSampler)",
            confidence=0.85,
        )


def _batches(tl: TimelineView) -> dict[int, list[tuple[int, int | None, float]]]:
    """site -> [(step, the batch's class when (nearly) all its labels are one, labels)], from
    the label histograms (<= 64 classes) and the top labels (more classes)."""
    out: dict[int, list[tuple[int, int | None, float]]] = {}
    for sid, rows in label_histograms(tl).items():
        for step, counts in rows:
            n = sum(counts)
            top = max(range(len(counts)), key=counts.__getitem__) if counts else 0
            single = top if counts and counts[top] >= NEARLY * n else None
            out.setdefault(sid, []).append((step, single, n))
    tops: dict[int, dict[int, dict[str, float]]] = {}
    for step, values in tl.series(TOP):
        for key, value in (values or {}).items():
            sid, _, stat = str(key).partition(".")
            if sid.isdigit() and isinstance(value, int | float):
                tops.setdefault(int(sid), {}).setdefault(step, {})[stat] = float(value)
    for sid, steps in tops.items():
        if sid in out:
            continue
        for step, d in sorted(steps.items()):
            if not {"top", "top_n", "n"} <= d.keys():
                continue
            single = int(d["top"]) if d["n"] > 0 and d["top_n"] >= NEARLY * d["n"] else None
            out.setdefault(sid, []).append((step, single, d["n"]))
    return out


def _runs(singles: list[int | None]) -> list[tuple[int | None, int]]:
    runs: list[tuple[int | None, int]] = []
    for c in singles:
        if runs and runs[-1][0] == c and c is not None:
            runs[-1] = (c, runs[-1][1] + 1)
        else:
            runs.append((c, 1))
    return [r for r in runs if r[0] is not None]

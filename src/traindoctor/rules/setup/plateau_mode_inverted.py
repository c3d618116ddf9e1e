"""TD517 plateau-mode-inverted: ReduceLROnPlateau stepped with a metric of the other direction.

Tests: tests/rules/test_td517_plateau_mode_inverted.py. Facts: the schedule probe's
`schedule.plateau` (probes/schedule.py) and the training loss.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import train_loss_values

REL_SAME = 1e-5  # a float32 loss read as a Python float and the recorded value


@dataclass
class _Point:
    step: int
    metric: float
    lr_before: float
    lr_after: float
    train: float | None  # the training loss since the previous scheduler step (its mean)
    same: bool  # the metric is one of the training loss values recorded there


@rule(
    code="TD517",
    name="plateau-mode-inverted",
    severity=Severity.WARNING,
    summary="ReduceLROnPlateau is stepped with a metric of the other direction: a loss with "
    "mode='max' (or an accuracy with mode='min'), so it cuts the lr while the run improves.",
    requires=("schedule.plateau", "loss.train", "loss.backward"),
    events=("lr_scheduler",),
    priority=40,
)
def plateau_mode_inverted(
    tl: TimelineView, *, min_steps: int = 4, min_cuts: int = 2, min_rank_corr: float = 0.5
) -> Iterator[Finding]:
    """
    ## What it detects
    A `ReduceLROnPlateau` built with `mode='max'` and stepped with a loss: each time the
    loss has not risen for `patience + 1` steps (that is, while it falls) the lr is cut.
    As info, the mirror case: the default `mode='min'` stepped with a value that rises as
    training goes (an accuracy).

    ## Why it matters
    The scheduler reads an improving run as a plateau: the lr is cut every `patience + 1`
    validations however well the model learns, and the run ends early at a tiny lr
    (FunctionLab/selene#115, md-mohaiminul/ViS4mer#4). Nothing fails; the run just learns
    less than it would.

    ## How it is measured
    The scheduler's `step(metric)` is wrapped: the value it was given (as a Python float,
    what the scheduler itself reads) and the lr of the first param group before and after
    the step (its cuts) are recorded, with the scheduler's `mode`. For each scheduler step,
    the training loss since the previous one is averaged. With `mode='max'`, a warning when
    the scheduler cut the lr at least `min_cuts` times in a window of `patience + 1` steps
    where the value it was given reached its lowest so far (it was falling, read as no
    progress), and that value moves with the training loss (rank correlation >=
    `min_rank_corr` over the scheduler's steps, or it is the training loss itself). With
    `mode='min'`, the mirror (cuts while the value reached its highest so far, rank
    correlation <= -`min_rank_corr`) is info: a validation loss that rises while the model
    overfits looks the same, and `mode='min'` is then right. Fewer than `min_steps`
    scheduler steps, or fewer cuts, say nothing.

    ## Example
    ```python
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, 'max', patience=2)
    for epoch in range(epochs):
        train_one_epoch()
        scheduler.step(validate())      # validate() returns the validation loss
    ```

    ## Fix
    ```python
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, 'min', patience=2)
    # mode='max' for a metric that should rise (accuracy, F1, BLEU), 'min' for a loss
    ```

    ## Known false positives
    A metric to maximize that falls while the training loss falls (a diversity or an
    entropy that should stay high). The `mode='min'` case is info only: a validation loss
    that rises past its earlier values while the training loss falls (overfitting) looks
    the same, and there `mode='min'` is right.
    """
    modes = _modes(tl)
    train = train_loss_values(tl)
    for key, mode in modes.items():
        points = _points(tl, key, train)
        if len(points) < max(min_steps, 2) or mode not in ("min", "max"):
            continue
        cuts = [i for i, p in enumerate(points) if p.lr_after < p.lr_before * (1 - 1e-9)]
        if len(cuts) < min_cuts:
            continue
        patience = _patience(tl, key)
        inverted = "max" if mode == "min" else "min"  # the direction the metric improves in
        against = _cuts_at_record(points, cuts, patience, inverted)
        if len(against) < min_cuts:
            continue
        rho = _rank_corr(
            [p.metric for p in points if p.train is not None],
            [p.train for p in points if p.train is not None],
        )
        same = sum(p.same for p in points) * 2 >= len(points)
        if mode == "max" and not (same or (rho is not None and rho >= min_rank_corr)):
            continue
        if mode == "min" and not (rho is not None and rho <= -min_rank_corr):
            continue
        yield _finding(tl, key, mode, points, cuts, against, rho, same, patience)


def _modes(tl: TimelineView) -> dict[str, str]:
    out = {}
    for e in tl.events("lr_scheduler"):
        mode = (e.get("settings") or {}).get("mode")
        if e.get("cls") == "ReduceLROnPlateau" or isinstance(mode, str):
            out.setdefault(str(e.get("key")), mode)
    return out


def _patience(tl: TimelineView, key: str) -> int:
    for e in tl.events("lr_scheduler"):
        if e.get("key") == key:
            value = (e.get("settings") or {}).get("patience")
            if isinstance(value, int) and value >= 0:
                return value
    return 0


def _points(tl: TimelineView, key: str, train: list[tuple[int, float]]) -> list[_Point]:
    out: list[_Point] = []
    prev = -1
    for step, values in tl.series("schedule.plateau"):
        rec = (values or {}).get(key)
        if not isinstance(rec, list | tuple) or len(rec) != 3:
            continue
        metric, before, after = rec
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in rec):
            continue
        window = [v for s, v in train if prev < s <= step and math.isfinite(v)]
        if not window:  # stepped right after the optimizer step: the last loss before it
            window = [v for s, v in train if s <= step and math.isfinite(v)][-1:]
        near = [v for s, v in train if step - 1 <= s <= step]
        same = any(abs(v - metric) <= REL_SAME * max(abs(v), 1e-12) for v in near)
        out.append(
            _Point(
                step,
                float(metric),
                float(before),
                float(after),
                statistics.fmean(window) if window else None,
                same,
            )
        )
        prev = step
    return out


def _cuts_at_record(
    points: list[_Point], cuts: list[int], patience: int, improves: str
) -> list[int]:
    """The cuts whose window (the patience + 1 steps that led to them) holds a new record of
    the metric in the direction it improves in (`improves`), over every earlier value."""
    out = []
    for i in cuts:
        start = max(0, i - patience)
        if start == 0:
            continue
        window = [p.metric for p in points[start : i + 1]]
        before = [p.metric for p in points[:start]]
        record = min(window) < min(before) if improves == "min" else max(window) > max(before)
        if record:
            out.append(i)
    return out


def _record(points: list[_Point], i: int, patience: int, mode: str) -> float:
    """The record the metric reached in the window that led to cut `i`."""
    window = [p.metric for p in points[max(0, i - patience) : i + 1]]
    return min(window) if mode == "max" else max(window)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _rank_corr(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or len(a) != len(b):
        return None
    ra, rb = _ranks(a), _ranks(b)
    if len(set(ra)) < 2 or len(set(rb)) < 2:
        return None
    return statistics.correlation(ra, rb)


def _finding(
    tl: TimelineView,
    key: str,
    mode: str,
    points: list[_Point],
    cuts: list[int],
    against: list[int],
    rho: float | None,
    same: bool,
    patience: int,
) -> Finding:
    first, last = points[0], points[-1]
    lr0, lr1 = points[cuts[0]].lr_before, points[cuts[-1]].lr_after
    values = [p.metric for p in points]
    corr = f"rank correlation with the training loss {rho:+.2f}" if rho is not None else ""
    at = ", ".join(f"{_record(points, i, patience, mode):.4g}" for i in against[:4])
    source = _source(tl, key)
    evidence: dict[str, Any] = {
        "scheduler": key,
        "mode": mode,
        "patience": patience,
        "scheduler_steps": len(points),
        "cuts": len(cuts),
        "cuts_while_improving": len(against),
        "lr": [lr0, lr1],
        "metric": [round(v, 6) for v in values[:64]],
        "metric_is_training_loss": same,
        "rank_corr_with_training_loss": None if rho is None else round(rho, 4),
    }
    if mode == "max":
        what = "the training loss itself" if same else f"a loss ({corr})"
        return tl.finding(
            title=f"ReduceLROnPlateau(mode='max') is stepped with a loss: it cut the lr "
            f"{len(cuts)} times ({lr0:.3g} -> {lr1:.3g}) while the value fell",
            step=points[cuts[0]].step,
            evidence=evidence,
            where=Where(source=source),
            cause=f"the value passed to scheduler.step() went {first.metric:.4g} -> "
            f"{min(values):.4g} (lowest) -> {last.metric:.4g} over {len(points)} scheduler "
            f"steps and moves with the training loss: it is {what}. With mode='max' the "
            f"scheduler waits for it to rise: {len(against)} of its {len(cuts)} lr cuts "
            f"came after a window of {patience + 1} steps in which the value reached its "
            f"lowest so far ({at}), an improvement read as a plateau.",
            fix="build it with mode='min' for a loss: `ReduceLROnPlateau(optimizer, "
            "mode='min', ...)` (keep mode='max' only for a metric that should rise, and "
            "pass that metric)",
            confidence=0.85,
        )
    unit = (
        " (every value in [0, 1]: an accuracy or a score?)"
        if all(0.0 <= v <= 1.0 for v in values)
        else ""
    )
    return tl.finding(
        title=f"ReduceLROnPlateau(mode='min') is stepped with a value that rises as the "
        f"training loss falls: it cut the lr {len(cuts)} times ({lr0:.3g} -> {lr1:.3g})",
        step=points[cuts[0]].step,
        evidence=evidence,
        where=Where(source=source),
        cause=f"the value passed to scheduler.step() went {first.metric:.4g} -> "
        f"{max(values):.4g} (highest) -> {last.metric:.4g}{unit}, against the training "
        f"loss ({corr}); {len(against)} of the {len(cuts)} lr cuts came after a window of "
        f"{patience + 1} steps in which it reached its highest so far ({at}). If it is a "
        "metric to maximize, mode='min' reads its rise as no progress; if it is a "
        "validation loss rising while the model overfits, mode='min' is right.",
        fix="for an accuracy or a score, `ReduceLROnPlateau(optimizer, mode='max', ...)`; "
        "for a loss, keep mode='min'",
        confidence=0.5,
        severity=Severity.INFO,
    )


def _source(tl: TimelineView, key: str) -> str | None:
    """The user's line: where step() is given the value, or, when a framework steps the
    scheduler with a logged metric (Lightning's `monitor`), the line that built it with its
    mode (the step's own site is then a library's line, or the user's trainer.fit())."""
    event = next((e for e in tl.events("lr_scheduler") if e.get("key") == key), None)
    if event is None:
        return None
    if event.get("stepped_by_framework") and event.get("built"):
        return event.get("built")
    return event.get("source")

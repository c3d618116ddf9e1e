"""The `experiment` events of a run (experiments/recipe.py), read by the TD7xx rules."""

from __future__ import annotations

from typing import Any

from ...timeline import TimelineView


def experiment(tl: TimelineView, name: str) -> dict[str, Any] | None:
    """The last `experiment` event of this name, or None."""
    found = [e for e in tl.events("experiment") if e.get("name") == name]
    return found[-1] if found else None


def curve_text(values: list[float], every: int = 10) -> str:
    """A curve as a short line: its first value, every `every`-th, its last."""
    if not values:
        return "no value"
    picks = values[::every]
    if picks[-1] != values[-1] or len(values) == 1:
        picks = [*picks, values[-1]] if len(values) > 1 else picks
    return " -> ".join(f"{v:.4g}" for v in picks)


def cost(event: dict[str, Any]) -> str:
    steps = event.get("steps") or 0
    seconds = event.get("seconds") or 0.0
    return f"{steps} steps, {seconds:.2f} s on the copy" if steps else f"{seconds:.2f} s"


def run_lr(tl: TimelineView) -> float:
    """The largest lr of any param group over the run (optim.lr), 0 when not recorded: a
    warmup from ~0 leaves the lr captured for the experiments far below it."""
    top = 0.0
    for _, groups in tl.series("optim.lr"):
        if isinstance(groups, dict):
            top = max([top, *(float(v) for v in groups.values() if isinstance(v, int | float))])
    return top

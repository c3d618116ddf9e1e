"""Shared by TD506-TD509, TD511, TD512: the loss call sites the loss-inputs probe described
(`loss_input` events) joined with their measured device facts (`loss_inputs.stats`) and label
histograms (`loss_inputs.labels`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...timeline import TimelineView

STATS = "loss_inputs.stats"
LABELS = "loss_inputs.labels"


@dataclass
class Site:
    """One loss call site (loss function + user line)."""

    id: int
    facts: dict[str, Any]  # the first `loss_input` event of the site
    events: list[dict[str, Any]] = field(default_factory=list)  # every shape seen
    stats: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> stat -> value

    @property
    def fn(self) -> str:
        return str(self.facts.get("fn"))

    @property
    def source(self) -> str | None:
        return self.facts.get("source")

    @property
    def classes(self) -> int | None:
        return self.facts.get("classes")

    def values(self, stat: str) -> list[tuple[int, float]]:
        return [(s, v[stat]) for s, v in sorted(self.stats.items()) if stat in v]

    def losses(self) -> list[float]:
        return [v for _, v in self.values("loss")]


def loss_sites(tl: TimelineView) -> dict[int, Site]:
    sites: dict[int, Site] = {}
    for e in tl.events("loss_input"):
        sid = e.get("site")
        if not isinstance(sid, int):
            continue
        site = sites.get(sid)
        if site is None:
            site = sites[sid] = Site(sid, e)
        site.events.append(e)
    for step, values in tl.series(STATS):
        for key, value in (values or {}).items():
            sid, _, stat = str(key).partition(".")
            if sid.isdigit() and int(sid) in sites and isinstance(value, int | float):
                sites[int(sid)].stats.setdefault(step, {})[stat] = float(value)
    return sites


def label_histograms(tl: TimelineView) -> dict[int, list[tuple[int, list[float]]]]:
    """site -> [(step, counts per class)] of class-index targets."""
    out: dict[int, dict[int, dict[int, float]]] = {}
    for step, values in tl.series(LABELS):
        for key, value in (values or {}).items():
            sid, _, cls = str(key).partition(".")
            if sid.isdigit() and cls.isdigit() and isinstance(value, int | float):
                out.setdefault(int(sid), {}).setdefault(step, {})[int(cls)] = float(value)
    hists: dict[int, list[tuple[int, list[float]]]] = {}
    for sid, steps in out.items():
        rows = []
        for step, counts in sorted(steps.items()):
            n = max(counts) + 1
            rows.append((step, [counts.get(c, 0.0) for c in range(n)]))
        hists[sid] = rows
    return hists


def finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

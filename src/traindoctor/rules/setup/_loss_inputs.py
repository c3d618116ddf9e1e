"""Shared by TD506-TD509, TD511, TD512: the loss call sites the loss-inputs probe described
(`loss_input` events) joined with their measured device facts (`loss_inputs.stats`) and label
histograms (`loss_inputs.labels`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...timeline import TimelineView
from .._incremental import Reader, fresh

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
    return LossInputsScan().sites(tl)


def label_histograms(tl: TimelineView) -> dict[int, list[tuple[int, list[float]]]]:
    """site -> [(step, counts per class)] of class-index targets."""
    return LossInputsScan().histograms(tl)


class LossInputsScan:
    """The parsed `loss_inputs.stats` and `loss_inputs.labels` kept between passes by the rules
    that read them (state=, rules/_incremental.py): a pass parses only the records written
    since the last, and `sites()` / `histograms()` give what loss_sites / label_histograms give
    on the whole timeline. The newest record (still being written) is parsed each pass and
    taken out again before the next."""

    def __init__(self) -> None:
        self.stats_reader, self.labels_reader = Reader(STATS), Reader(LABELS)
        self.readers = (self.stats_reader, self.labels_reader)
        self.stats: dict[int, dict[int, dict[str, float]]] = {}  # site -> step -> stat -> value
        self.labels: dict[int, dict[int, list[float]]] = {}  # site -> step -> counts per class
        self.newest: dict[str, int | None] = {STATS: None, LABELS: None}  # parsed, not settled

    def _read(self, tl: TimelineView, reader: Reader, parse: Any, held: dict) -> None:
        if not fresh(self, tl):
            self.__init__()  # an earlier step was rewritten: parse everything again
            reader, held = (
                (self.stats_reader, self.stats)
                if reader.name == STATS
                else (self.labels_reader, self.labels)
            )
        _drop(held, self.newest[reader.name])
        settled, pending = reader.read(tl)
        for step, values in settled + pending:
            parse(held, step, values)
        self.newest[reader.name] = pending[0][0] if pending else None

    def sites(self, tl: TimelineView) -> dict[int, Site]:
        """loss_sites(tl), from the records parsed so far."""
        self._read(tl, self.stats_reader, _parse_stats, self.stats)
        return _sites(tl, self.stats)

    def histograms(self, tl: TimelineView) -> dict[int, list[tuple[int, list[float]]]]:
        """label_histograms(tl), from the records parsed so far."""
        self._read(tl, self.labels_reader, _parse_labels, self.labels)
        return {sid: list(steps.items()) for sid, steps in self.labels.items()}


def _drop(held: dict[int, dict[int, Any]], step: int | None) -> None:
    """Take the records of `step` (the newest, parsed last pass) out of `held` again."""
    if step is None:
        return
    for sid in list(held):
        held[sid].pop(step, None)
        if not held[sid]:
            del held[sid]


def _parse_stats(held: dict[int, dict[int, dict[str, float]]], step: int, values: Any) -> None:
    for key, value in (values or {}).items():
        sid, _, stat = str(key).partition(".")
        if sid.isdigit() and isinstance(value, int | float):
            held.setdefault(int(sid), {}).setdefault(step, {})[stat] = float(value)


def _parse_labels(held: dict[int, dict[int, list[float]]], step: int, values: Any) -> None:
    counts: dict[int, dict[int, float]] = {}
    for key, value in (values or {}).items():
        sid, _, cls = str(key).partition(".")
        if sid.isdigit() and cls.isdigit() and isinstance(value, int | float):
            counts.setdefault(int(sid), {})[int(cls)] = float(value)
    for sid, by_class in counts.items():
        n = max(by_class) + 1
        held.setdefault(sid, {})[step] = [by_class.get(c, 0.0) for c in range(n)]


def _sites(tl: TimelineView, stats: dict[int, dict[int, dict[str, float]]]) -> dict[int, Site]:
    sites: dict[int, Site] = {}
    for e in tl.events("loss_input"):
        sid = e.get("site")
        if not isinstance(sid, int):
            continue
        site = sites.get(sid)
        if site is None:
            site = sites[sid] = Site(sid, e, stats=stats.get(sid, {}))
        site.events.append(e)
    return sites


def finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

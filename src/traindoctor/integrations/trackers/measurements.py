"""The per-layer quantities traindoctor measured, read from the timeline for the trackers.

Only the sampled steps (those where the gradient probe looked: grads.norm / params.update),
and a bounded set of series: the parameters the findings name (up to MAX_NAMED), then the
largest parameters by element count up to MAX_LAYERS. A series once chosen is kept, so a
tracker's charts do not lose a layer half-way through the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...findings import Finding
from ...timeline import Timeline

PREFIX = "traindoctor/"
MAX_LAYERS = 20  # per-layer series chosen by size
MAX_NAMED = 10  # params named by findings, kept even past MAX_LAYERS
MAX_GROUPS = 8  # optimizer param groups whose lr is posted (layer-wise lr: the first ones)

# (timeline signal, tracker name): per-param quantities read as they are.
PER_PARAM = (("grads.norm", "grad_norm"),)


@dataclass(frozen=True)
class Point:
    """One measured value at one step, under its tracker key (`traindoctor/grad_norm/fc.weight`)."""

    step: int
    key: str
    value: float


class Measurements:
    """Reads the new measured values of the chosen series since a given step."""

    def __init__(self, timeline: Timeline) -> None:
        self._tl = timeline
        self.layers: list[str] = []
        self._named = 0

    def choose(self, findings: list[Finding]) -> list[str]:
        """The per-layer series: params named by findings first, then the largest."""
        known = self._known_params()
        chosen = set(self.layers)
        for f in findings:
            for name in f.where.params:
                if self._named >= MAX_NAMED:
                    break
                if name in known and name not in chosen:
                    self.layers.append(name)
                    chosen.add(name)
                    self._named += 1
        if len(self.layers) < MAX_LAYERS:
            by_size = sorted(known.items(), key=lambda kv: (-kv[1], kv[0]))
            for name, _ in by_size:
                if len(self.layers) >= MAX_LAYERS:
                    break
                if name not in chosen:
                    self.layers.append(name)
                    chosen.add(name)
        return self.layers

    def _known_params(self) -> dict[str, int]:
        """Param name -> element count, for the params that have measurements."""
        params = self._tl.facts.get("params")
        sizes: dict[str, int] = {}
        if isinstance(params, dict):
            for name, info in params.items():
                numel = info.get("numel") if isinstance(info, dict) else None
                sizes[str(name)] = numel if isinstance(numel, int) else 0
        if not sizes:  # no attach-time facts (yet): the names the gradients were seen under
            for _, grads in self._tl.series("grads.norm")[-1:]:
                if isinstance(grads, dict):
                    sizes = dict.fromkeys(map(str, grads), 0)
        return sizes

    def since(self, step: int, findings: list[Finding]) -> list[Point]:
        """The chosen series' values at the sampled steps after `step`, in step order."""
        layers = self.choose(findings)
        tl = self._tl
        steps = {s for s, _ in tl.series_since("grads.norm", step)}
        steps.update(s for s, _ in tl.series_since("params.update", step))
        points: list[Point] = []
        for s in sorted(steps):
            for signal, label in PER_PARAM:
                values = tl.get(s, signal)
                if isinstance(values, dict):
                    points += _per_layer(s, label, values, layers)
            update, norm = tl.get(s, "params.update"), tl.get(s, "params.norm")
            if isinstance(update, dict) and isinstance(norm, dict):
                ratios = {
                    p: u / n
                    for p in layers
                    if (u := _number(update.get(p))) is not None
                    and (n := _number(norm.get(p))) is not None
                    and n > 0
                }
                points += _per_layer(s, "update_ratio", ratios, layers)
            scale = _number(tl.get(s, "amp.scale"))
            if scale is not None:
                points.append(Point(s, f"{PREFIX}amp_scale", scale))
            lrs = tl.get(s, "optim.lr")
            if isinstance(lrs, dict):
                for group, lr in sorted(lrs.items())[:MAX_GROUPS]:
                    value = _number(lr)
                    if value is not None:
                        points.append(Point(s, f"{PREFIX}lr/{group}", value))
        return points


def _per_layer(step: int, label: str, values: dict[str, Any], layers: list[str]) -> list[Point]:
    out = []
    for name in layers:
        value = _number(values.get(name))
        if value is not None:
            out.append(Point(step, f"{PREFIX}{label}/{name}", value))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)  # NaN and inf too: a non-finite gradient norm is worth seeing

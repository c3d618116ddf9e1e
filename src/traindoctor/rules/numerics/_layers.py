"""Helpers of the numerics rules: per-layer norms from per-param norms, robust statistics."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from .._util import module_of


def layer_series(
    series: Iterable[tuple[int, dict[str, Any]]],
) -> dict[str, list[tuple[int, float]]]:
    """{layer: [(step, norm)]}: a layer's norm is the root of the sum of its params' squared
    norms. A layer with a non-finite value at a step is left out of that step (TD202's)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step, norms in series:
        acc: dict[str, float] = {}
        bad: set[str] = set()
        for name, v in (norms or {}).items():
            layer = module_of(name)
            if v is None or not math.isfinite(v):
                bad.add(layer)
                continue
            acc[layer] = acc.get(layer, 0.0) + float(v) * float(v)
        for layer, sq in acc.items():
            if layer not in bad:
                out.setdefault(layer, []).append((step, math.sqrt(sq)))
    return out


def layer_order(params: dict[str, Any] | None, layers: Iterable[str]) -> list[str]:
    """Layers in the order their params were defined (≈ forward order), unknown ones last."""
    order: dict[str, int] = {}
    for name in params or {}:
        order.setdefault(module_of(name), len(order))
    return sorted(layers, key=lambda layer: (order.get(layer, 1 << 30), layer))


def params_of(params: dict[str, Any] | None, layer: str) -> tuple[str, ...]:
    return tuple(n for n in params or {} if module_of(n) == layer)


def median_mad(values: list[float]) -> tuple[float, float]:
    med = statistics.median(values)
    return med, statistics.median(abs(v - med) for v in values)


def fmt(x: float) -> str:
    return f"{x:.3g}"

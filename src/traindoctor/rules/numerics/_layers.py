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
        for layer, norm in layer_norms(norms).items():
            out.setdefault(layer, []).append((step, norm))
    return out


def layer_norms(norms: dict[str, Any] | None) -> dict[str, float]:
    """{layer: norm} of one step, as `layer_series` computes it (the same sums, in the same
    order), in the order the layers' first params come. Per-param dicts of a run have the same
    names step after step: the grouping of names into layers is computed once per name set
    (`_grouping`), so a step costs one pass over its values (10,000 params: ~2 ms where a
    `module_of` split per name cost ~15 ms, at each of TD206/TD207's folds)."""
    if not norms:
        return {}
    layers, index = _grouping(tuple(norms))
    acc = [0.0] * len(layers)
    bad = [False] * len(layers)
    for i, v in zip(index, norms.values()):
        if v is None or not math.isfinite(v):
            bad[i] = True
        else:
            acc[i] = acc[i] + float(v) * float(v)
    return {layer: math.sqrt(sq) for layer, sq, b in zip(layers, acc, bad) if not b}


#: name tuples -> (layers in first-seen order, each name's layer index): the few name sets of
#: one run (grads, weights, updates), bounded so that a process running many stays small.
_GROUPINGS: dict[tuple[str, ...], tuple[list[str], list[int]]] = {}
_MAX_GROUPINGS = 16


def _grouping(names: tuple[str, ...]) -> tuple[list[str], list[int]]:
    found = _GROUPINGS.get(names)
    if found is None:
        slot: dict[str, int] = {}
        index = [slot.setdefault(module_of(n), len(slot)) for n in names]
        found = (list(slot), index)
        if len(_GROUPINGS) >= _MAX_GROUPINGS:
            _GROUPINGS.pop(next(iter(_GROUPINGS)))  # the oldest
        _GROUPINGS[names] = found
    return found


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

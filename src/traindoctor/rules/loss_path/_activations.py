"""Shared reading of the activations.* signals for TD303 and TD304."""

from __future__ import annotations

import math
from typing import Any

from ...timeline import TimelineView


def flagged_layers(
    tl: TimelineView, signal: str, threshold: float, min_window: int, min_units: int
) -> list[dict[str, Any]]:
    """Layers whose fraction stays above threshold from some sampled step to the last one
    measured with a full enough window; one dict per layer, in forward order. Strictly above:
    "most units" is more than half, and a layer at exactly the threshold (16 of 32 units) is
    where a different sampled window flips the verdict."""
    series = tl.series(signal)
    sites_by_step = dict(tl.series("activations.sites"))
    ended = bool(tl.fact("outcome"))
    per_layer: dict[str, list[tuple[int, float, int]]] = {}
    for step, values in series:
        sites = sites_by_step.get(step) or {}
        for layer, frac in (values or {}).items():
            info = sites.get(layer) or {}
            if frac is None or frac != frac:  # NaN from a failed read
                continue
            per_layer.setdefault(layer, []).append((step, float(frac), int(info.get("window", 1))))
    out = []
    for layer, points in per_layer.items():
        need = min_window if not ended else 1
        full = [p for p in points if p[2] >= need]
        if not full or full[-1][1] <= threshold:
            continue
        first = full[-1][0]
        for step, frac, _ in reversed(full):
            if frac <= threshold:
                break
            first = step
        last_step = full[-1][0]
        info = (sites_by_step.get(last_step) or {}).get(layer) or {}
        if int(info.get("units", 0)) < min_units:
            continue
        pre_mean = _at(tl, "activations.pre_mean", last_step, layer)
        pre_std = _at(tl, "activations.pre_std", last_step, layer)
        if not all(v is None or math.isfinite(v) for v in (pre_mean, pre_std)):
            continue  # NaN/Inf pre-activations are not "never positive": TD20x report them
        out.append(
            {
                "layer": layer,
                "fraction": full[-1][1],
                "since_step": first,
                "step": last_step,
                "window": full[-1][2],
                "units": int(info.get("units", 0)),
                "op": info.get("op"),
                "module_type": info.get("module_type") or None,
                "pre_mean": pre_mean,
                "pre_std": pre_std,
                "bias_mean": _at(tl, "activations.bias_mean", last_step, layer),
                "input_std": dict(tl.series("activations.input_std")).get(last_step),
            }
        )
    return out


def _at(tl: TimelineView, signal: str, step: int, layer: str) -> float | None:
    value = (dict(tl.series(signal)).get(step) or {}).get(layer)
    return None if value is None else float(value)


def fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.3g}"

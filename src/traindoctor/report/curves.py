"""The loss curves a finding carries, for the three renderers: one text line (console,
report.md), an inline SVG (report.html) and the data of plots/curves-*.png (plots.py).

Two places hold curves, each `{label: [loss at step 0, 1, ...]}`: `evidence["curves"]` (the
experiments on a copy, TD702's lr grid say) and `evidence["trial"]["curves"]` (a fix trial:
"as written" against "with fix"). Values come back from findings.json as numbers, or as
"nan"/"inf" strings or None where the curve stopped being finite.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from ..findings import Finding

PREFIX = "curves-"  # plots/curves-<rank>-<code>.png
MAX_CURVES = 8  # more labels than this: the first ones (the lr grid has 5 at most)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class CurveGroup:
    title: str  # "experiment on a copy" or "fix trial"
    curves: dict[str, list[float]]  # label -> losses (NaN where not finite or missing)


def _value(v: Any) -> float:
    if isinstance(v, bool):
        return math.nan
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return math.nan
    return math.nan


def _curves(raw: Any) -> dict[str, list[float]]:
    if not isinstance(raw, dict):
        return {}
    out = {}
    for label, values in list(raw.items())[:MAX_CURVES]:
        if isinstance(values, list | tuple) and values:
            out[str(label)] = [_value(v) for v in values]
    return out


def curve_groups(f: Finding) -> list[CurveGroup]:
    """The finding's curve sets, experiment first, then the fix trial; empty when none."""
    groups = []
    ev = f.evidence or {}
    own = _curves(ev.get("curves"))
    if own:
        groups.append(CurveGroup("experiment on a copy", own))
    trial = ev.get("trial")
    if isinstance(trial, dict):
        tried = _curves(trial.get("curves"))
        if tried:
            groups.append(CurveGroup("fix trial", tried))
    return groups


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else ("nan" if math.isnan(v) else f"{v}")


def one_curve_text(values: list[float]) -> str:
    """`2.303 -> 0.0121 in 50 steps`, or where it stopped being finite."""
    if not values:
        return "no value"
    values = [_value(v) for v in values]
    steps = len(values) - 1
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        if bad == 0:
            return f"{_fmt(values[0])} at step 0"
        return f"{_fmt(values[0])} -> {_fmt(values[bad])} at step {bad}"
    return f"{_fmt(values[0])} -> {_fmt(values[-1])} in {steps} step{'s' if steps != 1 else ''}"


def curves_text(f: Finding) -> str | None:
    """One line: `lr x1: 2.303 -> 2.1 in 50 steps; lr x0.1: ... · fix trial: as written: ...`."""
    groups = curve_groups(f)
    if not groups:
        return None
    parts = []
    for g in groups:
        line = "; ".join(f"{label}: {one_curve_text(v)}" for label, v in g.curves.items())
        parts.append(line if g.title == "experiment on a copy" else f"{g.title}: {line}")
    return " · ".join(parts)


def plot_name(rank: int, f: Finding) -> str:
    """The file stem of the finding's curve plot: its rank in the report and its code."""
    return f"{PREFIX}{rank}-{f.code}"


# -- inline SVG (report.html) ---------------------------------------------------------------

W, H = 440, 170
LEFT, RIGHT, TOP, BOTTOM = 46, 10, 10, 24


def _scale(values: list[float]) -> tuple[float, float, bool]:
    """(low, high, log) of the y axis over every finite value."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0, False
    lo, hi = min(finite), max(finite)
    log = lo > 0 and hi / lo > 100
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi, log


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def svg(group: CurveGroup) -> str:
    """One small chart: a polyline per curve (finite points), a red x where a curve stops being
    finite, three y gridlines with labels, step on x; the labels in a legend below."""
    curves = group.curves
    longest = max(len(v) for v in curves.values())
    lo, hi, log = _scale([v for vs in curves.values() for v in vs])
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + pw * (i / max(longest - 1, 1))

    def y(v: float) -> float:
        t = math.log10(v) if log else v
        return TOP + ph * (1 - (t - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="curves" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{_e(group.title)}">',
        f"<title>{_e(group.title)}: loss per step</title>",
    ]
    for k in range(3):
        t = lo + (hi - lo) * k / 2
        gy = TOP + ph * (1 - k / 2)
        label = 10**t if log else t
        parts.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="#e6e6e6"/>'
            f'<text x="{LEFT - 4}" y="{gy + 3:.1f}" font-size="10" text-anchor="end" '
            f'fill="#5f6873">{_e(f"{label:.3g}")}</text>'
        )
    parts.append(
        f'<text x="{W - RIGHT}" y="{H - 6}" font-size="10" text-anchor="end" fill="#5f6873">'
        f"step (0-{longest - 1}){' · log scale' if log else ''}</text>"
    )
    for n, (label, values) in enumerate(curves.items()):
        color = COLORS[n % len(COLORS)]
        pts = [f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values) if math.isfinite(v)]
        if len(pts) == 1:
            parts.append(
                f'<circle cx="{pts[0].split(",")[0]}" cy="{pts[0].split(",")[1]}" r="2" fill="{color}"/>'
            )
        elif pts:
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{" ".join(pts)}">'
                f"<title>{_e(label)}: {_e(one_curve_text(values))}</title></polyline>"
            )
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            parts.append(
                f'<text x="{x(bad):.1f}" y="{TOP + 8}" font-size="12" text-anchor="middle" '
                f'fill="#d62728">×<title>{_e(label)}: not finite at step {bad}</title></text>'
            )
    parts.append("</svg>")
    legend = " ".join(
        f'<span style="color:{COLORS[n % len(COLORS)]}">━</span> {_e(label)}: '
        f"{_e(one_curve_text(values))}"
        for n, (label, values) in enumerate(curves.items())
    )
    return (
        f'<figure class="curves"><figcaption><b>{_e(group.title)}</b></figcaption>'
        f"{''.join(parts)}<figcaption>{legend}</figcaption></figure>"
    )


def curves_html(f: Finding) -> str:
    """Every curve group of the finding as inline SVG figures ("" when it has none)."""
    return "".join(svg(g) for g in curve_groups(f))

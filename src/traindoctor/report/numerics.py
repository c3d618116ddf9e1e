"""The "Numerics" section of report.md: per-layer gradient norms, the GradScaler's scale over
time and the loss parts' shares, from the timeline alone (no torch)."""

from __future__ import annotations

import statistics

from ..timeline import Timeline
from .text import fmt_value

MAX_LAYERS = 40  # a large model's table keeps its most extreme rows


def render_numerics(tl: Timeline) -> list[str]:
    lines: list[str] = []
    lines += _grad_table(tl)
    lines += _scale(tl)
    lines += _parts(tl)
    if not lines:
        return []
    return ["## Numerics", "", *lines]


def _grad_table(tl: Timeline) -> list[str]:
    per_param: dict[str, list[tuple[int, float]]] = {}
    for step, norms in tl.series("grads.norm"):
        for name, value in norms.items():
            per_param.setdefault(name, []).append((step, value))
    if not per_param:
        return []
    rows = []
    for name, series in per_param.items():
        values = [v for _, v in series]
        finite = [v for v in values if v == v and abs(v) != float("inf")]
        rows.append(
            (
                name,
                values[0],
                statistics.median(finite) if finite else float("nan"),
                values[-1],
                max(finite) if finite else float("nan"),
                len(values) - len(finite),
            )
        )
    if len(rows) > MAX_LAYERS:
        # Keep the largest and the smallest medians: where explosions and vanishing show.
        rows.sort(key=lambda r: r[2])
        half = MAX_LAYERS // 2
        rows = rows[:half] + rows[-half:]
        note = [
            f"_{len(per_param)} params; the {half} smallest and {half} largest medians shown._",
            "",
        ]
    else:
        note = []
    steps = sorted({s for series in per_param.values() for s, _ in series})
    out = [
        f"### Gradient norm per parameter (sampled steps {steps[0]}–{steps[-1]}, {len(steps)} samples)",
        "",
        *note,
        "| parameter | first | median | last | max | non-finite |",
        "|---|---|---|---|---|---|",
    ]
    for name, first, med, last, top, bad in rows:
        out.append(
            f"| `{name}` | {fmt_value(first)} | {fmt_value(med)} | {fmt_value(last)} "
            f"| {fmt_value(top)} | {bad or ''} |"
        )
    return [*out, ""]


def _scale(tl: Timeline) -> list[str]:
    series = tl.series("amp.scale")
    if not series:
        return []
    skipped = [s for s, v in tl.series("amp.skipped") if v]
    # A compact trace: the scale at each change.
    changes = [series[0]] + [(s, v) for (s, v), (_, p) in zip(series[1:], series) if v != p]
    trace = ", ".join(f"step {s}: {fmt_value(v)}" for s, v in changes[:20])
    more = f" (+{len(changes) - 20} more changes)" if len(changes) > 20 else ""
    return [
        "### GradScaler",
        "",
        f"- scale: {trace}{more}",
        f"- skipped steps: {len(skipped)}" + (f" (first at step {skipped[0]})" if skipped else ""),
        "",
    ]


def _parts(tl: Timeline) -> list[str]:
    values: dict[str, list[float]] = {}
    for _, parts in tl.series("loss.parts"):
        for name, v in parts.items():
            values.setdefault(name, []).append(abs(v))
    if not values:
        return []
    means = {n: statistics.fmean(v) for n, v in values.items()}
    total = sum(means.values()) or 1.0
    grad_means: dict[str, float] = {}
    for _, norms in tl.series("loss.parts_grad"):
        for name, v in norms.items():
            grad_means.setdefault(name, 0.0)
            grad_means[name] += v
    grad_total = sum(grad_means.values())
    out = ["### Loss parts", "", "| part | mean value | share of value | share of gradient norm |"]
    out.append("|---|---|---|---|")
    for name, mean in sorted(means.items(), key=lambda kv: -kv[1]):
        grad_share = (
            f"{grad_means[name] / grad_total:.0%}" if grad_total and name in grad_means else "—"
        )
        out.append(f"| {name} | {fmt_value(mean)} | {mean / total:.0%} | {grad_share} |")
    return [*out, ""]

"""plots/*.png: the run's series drawn from the timeline alone (no torch), for report.html.

Drawn with `matplotlib.figure.Figure` on an Agg canvas, never pyplot: the user's backend,
figure registry and rcParams are left untouched, and matplotlib is imported only when a report
is written. A plot whose data the run does not have is skipped with the reason (no empty
axes); a plot that raises is reported by the caller and the other plots are still drawn.
"""

from __future__ import annotations

import io
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..timeline import Timeline

DPI = 100
WIDTH = 9.6  # inches: 960 px, the width of the report's column
COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
MAX_HEATMAP_LAYERS = 60  # more layers: the most extreme medians are kept, as in report.md
MAX_LINES = 10  # update-ratio lines; more layers get a band and their extremes
MAX_METRICS = 16
# Heatmap cells that have no colour on the log scale.
ZERO = "#9e9e9e"
NONFINITE = "#d62728"
NOT_MEASURED = "#ffffff"


@dataclass(frozen=True)
class PlotImage:
    name: str  # file stem: plots/<name>.png
    title: str
    caption: str  # what is drawn, from which signal, with the numbers that matter
    png: bytes

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, read from the PNG header."""
        return int.from_bytes(self.png[16:20], "big"), int.from_bytes(self.png[20:24], "big")


@dataclass(frozen=True)
class PlotSkipped:
    name: str
    title: str
    reason: str


@dataclass
class Plots:
    images: list[PlotImage] = field(default_factory=list)
    skipped: list[PlotSkipped] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)  # (plot name, error)
    seconds: float = 0.0


class Skip(Exception):
    """Raised by a plot whose data the run does not have; the message says why."""


# -- reading the timeline -----------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A float from a recorded value: numbers, "nan"/"inf" strings (JSON round-trips), and
    per-step lists (micro-batches, several validation batches) reduced to their mean, or to
    their first non-finite value, which must stay visible."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    if isinstance(value, list):
        nums = [v for v in (_num(x) for x in value) if v is not None]
        bad = [v for v in nums if not math.isfinite(v)]
        if bad:
            return bad[0]
        return statistics.fmean(nums) if nums else None
    return None


def scalar_series(tl: Timeline, name: str) -> list[tuple[int, float]]:
    """(step, value) of a per-step signal holding a number or a list of numbers."""
    out = []
    for step, value in tl.series(name):
        v = _num(value)
        if v is not None:
            out.append((int(step), v))
    return out


def keyed_series(tl: Timeline, name: str) -> dict[str, list[tuple[int, float]]]:
    """key -> (step, value) of a per-step signal holding {key: number}."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step, values in tl.series(name):
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            v = _num(value)
            if v is not None:
                out.setdefault(str(key), []).append((int(step), v))
    return out


def layer_of(param: str) -> str:
    """The module that owns a parameter: its qualified name without the last part."""
    return param.rsplit(".", 1)[0] if "." in param else "<model>"


def per_layer(tl: Timeline, name: str) -> tuple[list[str], dict[int, dict[str, float]]]:
    """Per-param norms combined per layer, sqrt(sum of squares) over the layer's params (the norm
    of the layer's concatenated tensors). Returns the layers in model order and
    {step: {layer: norm}}."""
    params = list((tl.facts.get("params") or {}).keys())
    order = {layer_of(p): i for i, p in reversed(list(enumerate(params)))}
    by_step: dict[int, dict[str, float]] = {}
    for step, values in tl.series(name):
        if not isinstance(values, dict):
            continue
        sums: dict[str, float] = {}
        for pname, value in values.items():
            v = _num(value)
            if v is None:
                continue
            layer = layer_of(str(pname))
            sums[layer] = sums.get(layer, 0.0) + v * v
        by_step[int(step)] = {k: math.sqrt(s) for k, s in sums.items()}
    layers = {layer for norms in by_step.values() for layer in norms}
    ordered = sorted(layers, key=lambda name: (order.get(name, len(order)), name))
    return ordered, by_step


def update_ratios(tl: Timeline) -> tuple[list[str], dict[str, list[tuple[int, float]]]]:
    """||Δθ|| / ||θ|| per layer at each step where both were measured (params.update and
    params.norm, sampled steps)."""
    layers, updates = per_layer(tl, "params.update")
    _, norms = per_layer(tl, "params.norm")
    out: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(updates):
        for layer, upd in updates[step].items():
            norm = norms.get(step, {}).get(layer)
            if norm is None or norm == 0 or not math.isfinite(norm):
                continue  # a ratio to a zero (or broken) norm says nothing
            out.setdefault(layer, []).append((step, upd / norm))
    return [layer for layer in layers if layer in out], out


def _unavailable(tl: Timeline, signal: str) -> bool:
    return signal in (tl.facts.get("unavailable_signals") or [])


def _probe_failed(signal: str) -> str:
    return f"the probe that records `{signal}` failed in this run (see internal errors)"


# -- drawing helpers ------------------------------------------------------------------------


def _figure(height: float, *, left: float = 0.75, right: float = 0.25, wspace: float = 0.22):
    """A figure on its own Agg canvas, margins in inches. Fixed margins, not a layout engine:
    constrained/tight layout draws the figure once more and doubles the rendering time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=left / WIDTH,
        right=1 - right / WIDTH,
        top=1 - 0.35 / height,
        bottom=0.5 / height,
        wspace=wspace,
    )
    return fig


def _title(ax, text: str, fontsize: int = 10, loc: str = "center") -> None:
    """A title at a fixed height: with `y` given, matplotlib skips re-positioning it above the
    tick labels at each draw, which cost a third of a simple figure's drawing time."""
    ax.set_title(text, fontsize=fontsize, loc=loc, y=1.0, pad=6)


def _style(ax, xlabel: str = "step", ylabel: str = "") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e6e6e6", linewidth=0.7)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _png(fig) -> bytes:
    """Draw once and encode the RGB pixels (Pillow comes with matplotlib); no timestamp or
    version in the file, so the same timeline gives the same bytes."""
    from PIL import Image

    fig.canvas.draw()
    rgb = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba())
    buf = io.BytesIO()
    rgb.convert("RGB").save(buf, format="png", compress_level=1)
    return buf.getvalue()


def _log_y(ax, values: list[float], base: int = 10) -> None:
    """A log y axis, cheap to draw and labelled (see `_log_ticks`)."""
    ax.set_yscale("log", base=base)
    _log_ticks(ax.yaxis, values, base)


def _log_ticks(axis, values: list[float], base: int = 10) -> None:
    """No minor ticks (~80 Tick objects per axis were half of a figure's drawing time) and plain
    labels ("0.001", not mathtext's "$10^{-3}$", whose parser was a third of the rest). A range
    under two decades gets 1-2-5 ticks, under one decade evenly spaced ones: decade ticks alone
    would leave it with one label or none."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

    finite = [v for v in values if v > 0 and math.isfinite(v)]
    spread = max(finite) / min(finite) if finite else math.inf
    if base == 10 and spread < 10:
        axis.set_major_locator(MaxNLocator(4))
    elif base == 10 and spread < 100:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(_plain_formatter())


def _plain_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:g}")


def _positive_spread(values: list[float]) -> bool:
    """Log scale helps when every value is positive and they span more than two decades."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` finite values, for noisy per-step losses."""
    out, buf, total = [], [], 0.0
    for v in values:
        buf.append(v)
        total += v
        if len(buf) > window:
            total -= buf.pop(0)
        out.append(total / len(buf))
    return out


def _line(ax, series: list[tuple[int, float]], label: str, color: str, **kw: Any) -> list[int]:
    """Draw the finite points; return the steps whose value is not finite."""
    finite = [(s, v) for s, v in series if math.isfinite(v)]
    bad = [s for s, v in series if not math.isfinite(v)]
    if finite:
        xs, ys = zip(*finite)
        ax.plot(xs, ys, label=label, color=color, **kw)
    return bad


def _mark_nonfinite(ax, steps: list[int], label: str) -> None:
    """Red ticks along the top edge at steps whose value is NaN/inf (nothing to draw there)."""
    if steps:
        ax.plot(
            steps,
            [1.0] * len(steps),
            "|",
            color="#d62728",
            markersize=10,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label=label,
        )


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False, loc="best")


def _steps_text(steps: list[int]) -> str:
    return f"{len(steps)} step{'s' if len(steps) != 1 else ''} (first at step {steps[0]})"


# -- the plots ------------------------------------------------------------------------------


def plot_loss(tl: Timeline):
    """Training loss (logged, else the backward roots), validation loss, and the loss parts."""
    train = scalar_series(tl, "loss.train")
    source = "doc.log(loss=...)"
    if not train:
        train = scalar_series(tl, "loss.backward")
        source = "the tensors backward() ran on"
    val = scalar_series(tl, "loss.val")
    parts = keyed_series(tl, "loss.parts")
    if not (train or val or parts):
        raise Skip(
            "no loss was recorded: no backward pass ran and doc.log(loss=...) was not called"
        )
    fig = _figure(3.4)
    axes = fig.subplots(1, 2) if parts and (train or val) else [fig.subplots(1, 1)]
    ax = axes[0]
    notes = []
    if train or val:
        values = [v for _, v in train + val]
        if train:
            bad = [s for s, v in train if not math.isfinite(v)]
            finite = [(s, v) for s, v in train if math.isfinite(v)]
            if len(finite) > 60:
                # Noisy per-step values: faint raw line, bold running mean.
                xs = [s for s, _ in finite]
                ax.plot(xs, [v for _, v in finite], color=COLORS[0], alpha=0.3, linewidth=0.8)
                window = max(5, len(finite) // 40)
                smooth = _smooth([v for _, v in finite], window)
                ax.plot(
                    xs, smooth, color=COLORS[0], linewidth=1.6, label=f"train (mean of {window})"
                )
            else:
                _line(ax, train, "train", COLORS[0], linewidth=1.4)
            _mark_nonfinite(ax, bad, "train: non-finite")
            if bad:
                notes.append(f"train loss non-finite at {_steps_text(bad)}")
        if val:
            bad = _line(ax, val, "validation", COLORS[1], linewidth=1.4, marker="o", markersize=3)
            _mark_nonfinite(ax, bad, "validation: non-finite")
            if bad:
                notes.append(f"validation loss non-finite at {_steps_text(bad)}")
        if _positive_spread(values):
            _log_y(ax, values)
        _title(ax, "loss", fontsize=10)
        _style(ax, ylabel="loss")
        _legend(ax)
    if parts:
        pax = axes[-1]
        for i, (name, series) in enumerate(sorted(parts.items())):
            bad = _line(pax, series, name, COLORS[i % len(COLORS)], linewidth=1.2)
            _mark_nonfinite(pax, bad, f"{name}: non-finite")
        part_values = [v for s in parts.values() for _, v in s]
        if _positive_spread(part_values):
            _log_y(pax, part_values)
        _title(pax, "loss parts (doc.log(parts=...))", fontsize=10)
        _style(pax, ylabel="value")
        _legend(pax)
    caption = []
    if train:
        caption.append(f"training loss from {source}, {len(train)} steps")
    if val:
        caption.append(f"validation loss at {len(val)} steps")
    if parts:
        caption.append(f"{len(parts)} loss part{'s' if len(parts) != 1 else ''}")
    return fig, "; ".join(caption + notes) + "."


def plot_metrics(tl: Timeline):
    """One small panel per metric logged with doc.log(<name>=...)."""
    names = tl.signal_names("metric.")
    series = {n.split(".", 1)[1]: scalar_series(tl, n) for n in names}
    series = {k: v for k, v in series.items() if v}
    if not series:
        raise Skip(
            "no metrics were logged; log them with doc.log(val_acc=...) inside doc.validating()"
        )
    val_steps = {int(e["step"]) for e in tl.events("validation")}
    shown = sorted(series)[:MAX_METRICS]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = _figure(2.1 * rows + 0.2)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(shown):
            fig.delaxes(ax)  # no empty panels
            continue
        name = shown[i]
        data = series[name]
        bad = _line(
            ax, data, name, COLORS[i % len(COLORS)], linewidth=1.3, marker="o", markersize=2.5
        )
        _mark_nonfinite(ax, bad, "non-finite")
        steps = {s for s, _ in data}
        where = " (validation)" if val_steps and steps <= val_steps else ""
        last = data[-1][1]
        _title(ax, f"{name}{where}: last {last:.4g}", fontsize=9)
        _style(ax, xlabel="step")
    caption = f"{len(series)} metric{'s' if len(series) != 1 else ''} logged with doc.log()"
    if len(series) > len(shown):
        caption += f"; the first {len(shown)} by name are drawn"
    return fig, caption + "."


def plot_grad_norms(tl: Timeline):
    """Heatmap of the gradient norm per layer (rows, model order) and sampled step (columns)."""
    if _unavailable(tl, "grads.norm"):
        raise Skip(_probe_failed("grads.norm"))
    layers, by_step = per_layer(tl, "grads.norm")
    if not layers:
        raise Skip("no gradient norms were measured: no optimizer step ran on a sampled step")
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.patches import Patch

    steps = sorted(by_step)
    grid = np.full((len(layers), len(steps)), np.nan)
    measured = np.zeros(grid.shape, dtype=bool)  # NaN in `grid` alone could be either
    for j, step in enumerate(steps):
        for i, layer in enumerate(layers):
            if layer in by_step[step]:
                grid[i, j] = by_step[step][layer]
                measured[i, j] = True
    note = ""
    if len(layers) > MAX_HEATMAP_LAYERS:
        # Keep the smallest and largest medians (where vanishing and exploding show), in order.
        with np.errstate(all="ignore"):
            med = np.nanmedian(np.where(np.isfinite(grid), grid, np.nan), axis=1)
        rank = np.argsort(np.where(np.isnan(med), np.inf, med), kind="stable")
        half = MAX_HEATMAP_LAYERS // 2
        keep = sorted(set(rank[:half].tolist()) | set(rank[-half:].tolist()))
        note = f"; {len(layers)} layers, the {half} smallest and {half} largest medians drawn"
        layers = [layers[i] for i in keep]
        grid, measured = grid[keep], measured[keep]
    positive = grid[np.isfinite(grid) & (grid > 0)]
    zero = grid == 0
    nonfinite = measured & ~np.isfinite(grid)
    height = min(12.0, 1.2 + 0.22 * len(layers))
    # Room on the left for the layer names (about 0.06 in per character at 8 pt).
    left = min(3.6, 0.3 + 0.06 * max(len(layer) for layer in layers))
    fig = _figure(height, left=left, right=1.25)
    ax = fig.subplots(1, 1)
    cmap = colormaps["viridis"].with_extremes(bad=NOT_MEASURED)
    valid = np.ma.masked_where(~(np.isfinite(grid) & (grid > 0)), grid)
    if positive.size:
        lo, hi = float(positive.min()), float(positive.max())
        if hi <= lo:
            lo, hi = lo / 10, hi * 10
        image = ax.imshow(
            valid, aspect="auto", interpolation="nearest", cmap=cmap, norm=LogNorm(lo, hi)
        )
        pos = ax.get_position()
        cax = fig.add_axes((pos.x1 + 0.12 / WIDTH, pos.y0, 0.14 / WIDTH, pos.height))
        bar = fig.colorbar(image, cax=cax)
        bar.set_label("‖grad‖ (log scale)", fontsize=9)
        bar.ax.tick_params(labelsize=8)
        _log_ticks(bar.ax.yaxis, [lo, hi])
    else:
        ax.imshow(valid, aspect="auto", interpolation="nearest", cmap=cmap)
    legend = []
    for mask, color, label in ((zero, ZERO, "exactly 0"), (nonfinite, NONFINITE, "inf / NaN")):
        if mask.any():
            ax.imshow(
                np.ma.masked_where(~mask, np.ones_like(grid)),
                aspect="auto",
                interpolation="nearest",
                cmap=ListedColormap([color]),
            )
            legend.append(Patch(facecolor=color, edgecolor="#999999", label=label))
    if not measured.all():
        legend.append(Patch(facecolor=NOT_MEASURED, edgecolor="#999999", label="not measured"))
    if legend:
        # Above the axes, right of the title: never over the cells or the tick labels.
        ax.legend(
            handles=legend,
            fontsize=8,
            frameon=False,
            loc="lower right",
            bbox_to_anchor=(1, 1),
            ncol=len(legend),
            borderaxespad=0.1,
        )
    ax.set_yticks(range(len(layers)), layers, fontsize=8 if len(layers) <= 30 else 6)
    every = max(1, math.ceil(len(steps) / 20))
    ticks = list(range(0, len(steps), every))
    ax.set_xticks(ticks, [str(steps[j]) for j in ticks], fontsize=8)
    ax.set_xlabel("sampled step", fontsize=9)
    _title(ax, "gradient norm per layer", fontsize=10, loc="left")
    caption = (
        f"‖grad‖ per layer (the norm of its params' gradients, `grads.norm`) at "
        f"{len(steps)} sampled steps, rows in model order{note}"
    )
    counts = []
    if zero.any():
        counts.append(f"{int(zero.sum())} cells exactly 0")
    if nonfinite.any():
        counts.append(f"{int(nonfinite.sum())} non-finite")
    if counts:
        caption += "; " + ", ".join(counts)
    return fig, caption + "."


def plot_update_ratio(tl: Timeline):
    """||Δθ|| / ||θ|| per layer over the sampled steps, log scale; zeros marked at the bottom."""
    if _unavailable(tl, "params.update"):
        raise Skip(_probe_failed("params.update"))
    layers, ratios = update_ratios(tl)
    if not layers:
        raise Skip("no parameter update was measured: no optimizer step ran on a sampled step")
    fig = _figure(3.6)
    ax = fig.subplots(1, 1)
    zero_steps: dict[str, list[int]] = {}
    note = ""
    if len(layers) <= MAX_LINES:
        drawn = layers
    else:
        # Many layers: the spread across layers as a band, plus the slowest and fastest layers.
        meds = {
            layer: statistics.median([v for _, v in ratios[layer] if math.isfinite(v)] or [0.0])
            for layer in layers
        }
        ranked = sorted(layers, key=lambda layer: meds[layer])
        drawn = ranked[:3] + ranked[-3:]
        steps = sorted({s for layer in layers for s, _ in ratios[layer]})
        lo, mid, hi = [], [], []
        for step in steps:
            vals = [v for layer in layers for s, v in ratios[layer] if s == step and v > 0]
            vals = [v for v in vals if math.isfinite(v)]
            if vals:
                vals.sort()
                lo.append((step, vals[0]))
                mid.append((step, statistics.median(vals)))
                hi.append((step, vals[-1]))
        if mid:
            ax.fill_between(
                [s for s, _ in lo],
                [v for _, v in lo],
                [v for _, v in hi],
                color="#cccccc",
                alpha=0.5,
                label=f"all {len(layers)} layers (min–max)",
            )
            ax.plot([s for s, _ in mid], [v for _, v in mid], color="#555555", label="median")
        note = f"; {len(layers)} layers: the band spans all, the 3 slowest and 3 fastest are drawn"
    positive = [v for layer in drawn for _, v in ratios[layer] if v > 0 and math.isfinite(v)]
    for i, layer in enumerate(drawn):
        color = COLORS[i % len(COLORS)]
        series = [(s, v) for s, v in ratios[layer] if v > 0 or not math.isfinite(v)]
        bad = _line(ax, series, layer, color, linewidth=1.3, marker="o", markersize=3)
        _mark_nonfinite(ax, bad, f"{layer}: non-finite")
        zeros = [s for s, v in ratios[layer] if v == 0]
        if zeros:
            zero_steps[layer] = zeros
            # A zero has no place on a log axis: a marker on the bottom edge, named in the
            # legend when the layer has no line of its own.
            ax.plot(
                zeros,
                [0.0] * len(zeros),
                "v",
                color=color,
                markersize=6,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                label=None if len(series) > len(bad) else f"{layer}: no change",
            )
    if positive:
        _log_y(ax, positive)
    _title(ax, "update ratio ‖Δθ‖ / ‖θ‖ per layer", fontsize=10)
    _style(ax, ylabel="‖Δθ‖ / ‖θ‖")
    _legend(ax)
    steps_all = sorted({s for layer in layers for s, _ in ratios[layer]})
    caption = (
        f"‖Δθ‖/‖θ‖ per layer over one optimizer step (`params.update` / `params.norm`), at "
        f"{len(steps_all)} sampled steps{note}"
    )
    if zero_steps:
        caption += (
            f"; ▼ on the bottom edge: no change at all ({len(zero_steps)} "
            f"layer{'s' if len(zero_steps) != 1 else ''}: "
            + ", ".join(sorted(zero_steps)[:6])
            + ("…" if len(zero_steps) > 6 else "")
            + ")"
        )
    return fig, caption + "."


def plot_grad_scaler(tl: Timeline):
    """The GradScaler's scale at the end of each step, skipped steps marked."""
    scale = scalar_series(tl, "amp.scale")
    if not scale:
        if _unavailable(tl, "amp.scale"):
            raise Skip(_probe_failed("amp.scale"))
        if not tl.facts.get("scaler"):
            raise Skip("the run used no GradScaler")
        raise Skip("the GradScaler's scale was never recorded: no step completed")
    skipped = {s for s, v in scalar_series(tl, "amp.skipped") if v}
    fig = _figure(3.0)
    ax = fig.subplots(1, 1)
    finite = [(s, v) for s, v in scale if math.isfinite(v) and v > 0]
    if finite:
        ax.plot(
            *zip(*finite), drawstyle="steps-post", color=COLORS[0], linewidth=1.4, label="scale"
        )
        _log_y(ax, [v for _, v in finite], base=2)
    at = dict(scale)
    marks = [(s, at[s]) for s in sorted(skipped) if s in at and math.isfinite(at[s]) and at[s] > 0]
    if marks:
        ax.plot(*zip(*marks), "x", color="#d62728", markersize=6, label="step skipped")
    _title(ax, "GradScaler scale", fontsize=10)
    _style(ax, ylabel="scale")
    _legend(ax)
    caption = (
        f"`amp.scale` at the end of {len(scale)} steps, from {scale[0][1]:g} to {scale[-1][1]:g}"
    )
    caption += f"; {len(skipped)} skipped step{'s' if len(skipped) != 1 else ''}"
    if skipped:
        caption += f" (first at step {min(skipped)})"
    return fig, caption + "."


def plot_lr(tl: Timeline):
    """Learning rate per param group over the steps."""
    groups = keyed_series(tl, "optim.lr")
    if not groups:
        if _unavailable(tl, "optim.lr"):
            raise Skip(_probe_failed("optim.lr"))
        raise Skip("no learning rate was recorded: no optimizer step was observed")
    fig = _figure(3.0)
    ax = fig.subplots(1, 1)
    styles = ("-", "--", ":", "-.")
    for i, (gid, series) in enumerate(sorted(groups.items())):
        # Groups often share a schedule: different dashes keep overlapping lines visible.
        _line(
            ax,
            series,
            gid,
            COLORS[i % len(COLORS)],
            linewidth=1.4,
            linestyle=styles[i % len(styles)],
            drawstyle="steps-post",
        )
    lrs = [v for s in groups.values() for _, v in s]
    if _positive_spread(lrs):
        _log_y(ax, lrs)
    _title(ax, "learning rate per param group", fontsize=10)
    _style(ax, ylabel="lr")
    _legend(ax)
    parts = []
    for gid, series in sorted(groups.items())[:4]:
        vals = [v for _, v in series]
        parts.append(f"{gid}: {vals[0]:g} → {vals[-1]:g} (min {min(vals):g}, max {max(vals):g})")
    more = f"; {len(groups) - 4} more groups" if len(groups) > 4 else ""
    return fig, "`optim.lr` at each step; " + "; ".join(parts) + more + "."


PLOTS: tuple[tuple[str, str, Callable[[Timeline], Any]], ...] = (
    ("loss", "Loss", plot_loss),
    ("metrics", "Metrics", plot_metrics),
    ("grad_norms", "Gradient norm per layer", plot_grad_norms),
    ("update_ratio", "Update ratio per layer", plot_update_ratio),
    ("grad_scaler", "GradScaler scale", plot_grad_scaler),
    ("lr", "Learning rate", plot_lr),
)


def plots_off() -> str | None:
    """Why no plot is drawn at all (TRAINDOCTOR_PLOTS=0, no matplotlib), or None."""
    if os.environ.get("TRAINDOCTOR_PLOTS", "1").strip().lower() in ("0", "false", "no", "off"):
        return "plots are turned off (TRAINDOCTOR_PLOTS=0)"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed"
    return None


def plot_curves(group: Any, code: str):
    """One finding's compared loss curves (report/curves.py's CurveGroup), small."""
    fig = _figure(2.6, left=0.75, right=2.6)
    ax = fig.add_subplot(1, 1, 1)
    values = [v for vs in group.curves.values() for v in vs]
    for n, (label, vs) in enumerate(group.curves.items()):
        bad = _line(ax, list(enumerate(vs)), label, COLORS[n % len(COLORS)], linewidth=1.4)
        _mark_nonfinite(ax, bad[:1], f"{label}: not finite")
    if _positive_spread(values):
        _log_y(ax, values)
    _title(ax, f"{code}: {group.title}, loss per step", fontsize=9)
    _style(ax, ylabel="loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def curve_images(findings: list[Any]) -> tuple[list[PlotImage], list[tuple[str, BaseException]]]:
    """plots/curves-<rank>-<code>.png for each finding that carries loss curves."""
    from .curves import curve_groups, curves_text, plot_name

    images, errors = [], []
    for rank, f in enumerate(findings, 1):
        groups = curve_groups(f)
        if not groups:
            continue
        name = plot_name(rank, f)
        try:
            # Several groups (experiment, fix trial): drawn one under the other in one file.
            pngs = [_png(plot_curves(g, f.code)) for g in groups]
            images.append(PlotImage(name, f"{f.code} curves", curves_text(f) or "", _stack(pngs)))
        except Exception as exc:  # noqa: BLE001  (one broken plot must not cost the others)
            errors.append((name, exc))
    return images, errors


def _stack(pngs: list[bytes]) -> bytes:
    if len(pngs) == 1:
        return pngs[0]
    from PIL import Image

    ims = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    out = Image.new("RGB", (max(i.width for i in ims), sum(i.height for i in ims)), "white")
    y = 0
    for im in ims:
        out.paste(im, (0, y))
        y += im.height
    buf = io.BytesIO()
    out.save(buf, format="png", compress_level=1)
    return buf.getvalue()


def render_plots(tl: Timeline | None, findings: list[Any] | None = None) -> Plots:
    """Draw every plot the timeline has data for; each plot's failure is kept, not raised.
    With `findings`, also each finding's loss curves (plots/curves-*.png, for report.md; the
    page draws them inline).

    `TRAINDOCTOR_PLOTS=0` turns plotting off (report.html is still written, and says so): a
    render costs a few tenths of a second of CPU, which test suites running hundreds of short
    runs may not want to pay.
    """
    out = Plots()
    t0 = time.perf_counter()
    off = plots_off()
    if off is None and findings and tl is not None:  # as report.md links them (markdown.py)
        out.images, out.errors = curve_images(findings)
    reason = "the run directory has no timeline.jsonl" if tl is None else off
    if reason is not None:
        out.skipped = [PlotSkipped(name, title, reason) for name, title, _ in PLOTS]
        return out
    for name, title, draw in PLOTS:
        try:
            fig, caption = draw(tl)
            out.images.append(PlotImage(name, title, caption, _png(fig)))
        except Skip as why:
            out.skipped.append(PlotSkipped(name, title, str(why)))
        except Exception as exc:  # noqa: BLE001  (one broken plot must not cost the others)
            out.errors.append((name, exc))
            out.skipped.append(
                PlotSkipped(name, title, f"could not be drawn: {type(exc).__name__}: {exc}")
            )
    out.seconds = time.perf_counter() - t0
    return out

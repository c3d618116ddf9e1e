"""plots/*.png from hand-built timelines: each plot is drawn when its data exists and skipped
(with the reason) when it does not; the numbers behind the plots; failure isolation."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402  (comes with matplotlib)

from traindoctor.findings import Finding, Severity  # noqa: E402
from traindoctor.report import load_run, rerender_run, write_run  # noqa: E402
from traindoctor.report import plots as plots_mod  # noqa: E402
from traindoctor.report.model import Report  # noqa: E402
from traindoctor.report.plots import per_layer, render_plots, update_ratios  # noqa: E402
from traindoctor.testing import make_timeline  # noqa: E402

PARAMS = ["enc.weight", "enc.bias", "head.weight", "head.bias"]


@pytest.fixture(autouse=True)
def _plots_on(monkeypatch):
    """These tests draw, even where a suite turns plotting off to save time."""
    monkeypatch.delenv("TRAINDOCTOR_PLOTS", raising=False)


ALL = {"loss", "metrics", "grad_norms", "update_ratio", "grad_scaler", "lr"}


def _steps(n: int = 40, **extra):
    """Per-step signals as the probes record them, for `n` steps."""
    steps = {}
    for s in range(1, n + 1):
        sig = {
            "loss.train": [2.0 / s],
            "loss.parts": {"ce": 1.5 / s, "reg": 0.01},
            "optim.lr": {"opt0/group0": 0.1 * 0.9**s, "opt0/group1": 0.01},
            "amp.scale": 65536.0 if s < 20 else 32768.0,
        }
        if s % 10 == 0:
            sig["loss.val"] = [2.2 / s]
            sig["metric.val_acc"] = [min(1.0, s / 40)]
            sig["metric.val_f1"] = [min(1.0, s / 50)]
        if s <= 3 or s % 10 == 0:  # sampled steps
            sig["grads.norm"] = {"enc.weight": 3.0, "enc.bias": 4.0, "head.weight": 0.5 / s}
            sig["grads.norm"]["head.bias"] = 0.0
            sig["params.norm"] = {p: 10.0 for p in PARAMS}
            sig["params.update"] = {p: 0.01 for p in PARAMS}
        steps[s] = sig
    steps[20]["amp.skipped"] = 1
    for s, sig in extra.items():
        steps.setdefault(int(s[1:]), {}).update(sig)
    return steps


def _full_timeline():
    events = [{"kind": "validation", "step": s} for s in range(10, 41, 10)]
    return make_timeline(
        params=PARAMS, steps=_steps(), events=events, facts={"scaler": "GradScaler"}
    )


def _pixels(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


def _not_blank(png: bytes) -> bool:
    """More than background: the darkest pixels (lines, text) differ from the lightest."""
    lo, hi = _pixels(png).convert("L").getextrema()
    return hi - lo > 100


def test_every_plot_is_drawn_from_a_full_timeline():
    out = render_plots(_full_timeline())
    assert not out.errors, out.errors
    assert not out.skipped, out.skipped
    assert {im.name for im in out.images} == ALL
    for im in out.images:
        assert im.png.startswith(b"\x89PNG\r\n\x1a\n"), im.name
        img = _pixels(im.png)
        assert img.size == im.size and img.size[0] == 960, (im.name, img.size)
        assert _not_blank(im.png), im.name
        assert im.caption, im.name


PLOT_SIGNALS = {
    "loss": ("loss.train", "loss.val", "loss.parts"),
    "metrics": ("metric.val_acc", "metric.val_f1"),
    "grad_norms": ("grads.norm",),
    "update_ratio": ("params.update",),
    "grad_scaler": ("amp.scale",),
    "lr": ("optim.lr",),
}


def _draw(name: str, tl):
    """One plot's figure and caption (not encoded: the caption tests need no pixels)."""
    return dict((n, f) for n, _, f in plots_mod.PLOTS)[name](tl)


@pytest.mark.parametrize("name", sorted(PLOT_SIGNALS))
def test_a_plot_without_its_data_is_skipped_with_a_reason(name):
    signals = PLOT_SIGNALS[name]
    steps = {s: {k: v for k, v in sig.items() if k not in signals} for s, sig in _steps().items()}
    tl = make_timeline(params=PARAMS, steps=steps, facts={"scaler": None})
    with pytest.raises(plots_mod.Skip) as why:
        _draw(name, tl)
    assert len(str(why.value)) > 20, why.value  # a sentence, not an empty marker
    # Every other plot still has its data, and is still drawn.
    for other in set(PLOT_SIGNALS) - {name}:
        fig, caption = _draw(other, tl)
        assert fig.axes and caption, other


def test_each_plot_alone_on_an_empty_run_is_skipped_not_drawn_empty():
    out = render_plots(make_timeline(params=PARAMS, steps={}))
    assert not out.images and not out.errors
    reasons = {s.name: s.reason for s in out.skipped}
    assert set(reasons) == ALL
    assert "no GradScaler" in reasons["grad_scaler"]
    assert "doc.log(val_acc=...)" in reasons["metrics"]


def test_a_failed_probe_is_named_as_the_reason():
    tl = make_timeline(params=PARAMS, steps={}, facts={"unavailable_signals": ["grads.norm"]})
    reasons = {s.name: s.reason for s in render_plots(tl).skipped}
    assert "`grads.norm` failed" in reasons["grad_norms"]


def test_per_layer_norm_is_the_norm_of_the_layers_tensors():
    tl = make_timeline(
        params=PARAMS,
        steps={1: {"grads.norm": {"enc.weight": 3.0, "enc.bias": 4.0, "head.weight": 2.0}}},
    )
    layers, by_step = per_layer(tl, "grads.norm")
    assert layers == ["enc", "head"]  # model order
    assert by_step[1]["enc"] == pytest.approx(5.0)  # sqrt(3² + 4²)
    assert by_step[1]["head"] == pytest.approx(2.0)


def test_update_ratio_divides_update_norm_by_param_norm_per_layer():
    tl = make_timeline(
        params=PARAMS,
        steps={
            2: {
                "params.update": {"enc.weight": 0.3, "enc.bias": 0.4, "head.weight": 0.0},
                "params.norm": {"enc.weight": 6.0, "enc.bias": 8.0, "head.weight": 1.0},
            }
        },
    )
    layers, ratios = update_ratios(tl)
    assert layers == ["enc", "head"]
    assert ratios["enc"] == [(2, pytest.approx(0.05))]  # 0.5 / 10
    assert ratios["head"] == [(2, 0.0)]


def test_grad_norm_heatmap_says_which_cells_are_zero_or_nonfinite():
    steps = _steps()
    steps[2]["grads.norm"]["enc.weight"] = float("inf")
    tl = make_timeline(params=PARAMS, steps=steps)
    _, caption = _draw("grad_norms", tl)
    # head.bias is 0 but head.weight is not, so the `head` layer is never exactly 0; the inf
    # makes one `enc` cell non-finite.
    assert "1 non-finite" in caption
    assert "exactly 0" not in caption
    steps = _steps()
    for sig in steps.values():
        if "grads.norm" in sig:
            sig["grads.norm"] = {**sig["grads.norm"], "head.weight": 0.0}
    _, caption = _draw("grad_norms", make_timeline(params=PARAMS, steps=steps))
    assert "cells exactly 0" in caption


def test_nonfinite_losses_are_counted_not_dropped_silently():
    steps = _steps()
    steps[7]["loss.train"] = [float("nan")]
    steps[8]["loss.train"] = ["inf"]  # as a JSON round-trip may leave it
    tl = make_timeline(params=PARAMS, steps=steps)
    _, caption = _draw("loss", tl)
    assert "train loss non-finite at 2 steps (first at step 7)" in caption


def test_zero_code_runs_plot_the_backward_losses():
    steps = {s: {"loss.backward": [1.0 / s]} for s in range(1, 11)}
    _, caption = _draw("loss", make_timeline(steps=steps))
    assert "the tensors backward() ran on" in caption


def test_many_layers_stay_readable():
    names = [f"blocks.{i}.weight" for i in range(150)]
    steps = {
        s: {
            "grads.norm": {n: float(i + 1) for i, n in enumerate(names)},
            "params.norm": dict.fromkeys(names, 1.0),
            "params.update": {n: 1e-3 * (i + 1) for i, n in enumerate(names)},
        }
        for s in (1, 2, 3, 20)
    }
    tl = make_timeline(params=names, steps=steps)
    fig, caption = _draw("grad_norms", tl)
    assert "150 layers, the 30 smallest and 30 largest medians drawn" in caption
    assert len(fig.axes[0].get_yticks()) == 60
    assert fig.get_size_inches()[1] <= 12  # the figure stops growing
    _, caption = _draw("update_ratio", tl)
    assert "150 layers: the band spans all" in caption


def test_same_timeline_gives_the_same_bytes():
    a = render_plots(_full_timeline())
    b = render_plots(_full_timeline())
    assert [im.png for im in a.images] == [im.png for im in b.images]


def test_plotting_leaves_matplotlibs_global_state_alone():
    import matplotlib

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    rc = dict(matplotlib.rcParams)
    render_plots(_full_timeline())
    assert matplotlib.get_backend() == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    assert dict(matplotlib.rcParams) == rc


def test_importing_traindoctor_does_not_import_matplotlib():
    code = "import sys, traindoctor, traindoctor.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plots_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TRAINDOCTOR_PLOTS", "0")
    out = render_plots(_full_timeline())
    assert not out.images
    assert {s.reason for s in out.skipped} == {"plots are turned off (TRAINDOCTOR_PLOTS=0)"}


# -- write_run: files on disk, failure isolation -----------------------------------------------


def _report(tmp_path, tl=None):
    finding = Finding(
        code="TD108", name="loss-not-decreasing", severity=Severity.WARNING, title="t", step=1
    )
    return Report(
        findings=[finding], steps=40, run_dir=tmp_path / "run", timeline=tl or _full_timeline()
    )


def test_write_run_writes_every_plot_and_the_page(tmp_path):
    report = _report(tmp_path)
    write_run(report)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(f"{n}.png" for n in ALL)
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(ALL)
    assert not report.internal_errors


def test_a_broken_plot_is_an_internal_error_and_the_rest_is_written(tmp_path, monkeypatch):
    def boom(tl):
        raise ZeroDivisionError("planted")

    working = plots_mod.PLOTS
    monkeypatch.setattr(
        plots_mod, "PLOTS", tuple((n, t, boom if n == "lr" else f) for n, t, f in working)
    )
    report = _report(tmp_path)
    write_run(report)
    run = tmp_path / "run"
    assert not (run / "plots" / "lr.png").exists()
    assert (run / "plots" / "loss.png").exists()
    for name in ("findings.json", "report.md", "report.html", "timeline.jsonl"):
        assert (run / name).is_file(), name
    errors = json.loads((run / "findings.json").read_text())["internal_errors"]
    assert errors == [
        {"where": "report plot lr", "error": "ZeroDivisionError: planted", "step": None}
    ]
    assert "report plot lr" in (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    assert "could not be drawn: ZeroDivisionError: planted" in page
    # A re-render where the plot works again drops the error and draws the plot.
    monkeypatch.setattr(plots_mod, "PLOTS", working)
    rerender_run(load_run(run))
    assert (run / "plots" / "lr.png").exists()
    assert json.loads((run / "findings.json").read_text())["internal_errors"] == []


def test_a_broken_page_does_not_cost_the_other_files(tmp_path, monkeypatch):
    import traindoctor.report.html as html_mod

    def boom(report, plots):
        raise RuntimeError("planted")

    monkeypatch.setattr(html_mod, "render_html", boom)
    report = _report(tmp_path)
    write_run(report)
    run = tmp_path / "run"
    assert not (run / "report.html").exists()
    assert (run / "plots" / "loss.png").exists()
    errors = json.loads((run / "findings.json").read_text())["internal_errors"]
    assert [e["where"] for e in errors] == ["report html"]


def test_a_plot_skipped_on_rerender_does_not_leave_an_old_png(tmp_path):
    write_run(_report(tmp_path))
    assert (tmp_path / "run" / "plots" / "grad_scaler.png").exists()
    steps = {
        s: {k: v for k, v in sig.items() if not k.startswith("amp.")} for s, sig in _steps().items()
    }
    write_run(_report(tmp_path, make_timeline(params=PARAMS, steps=steps)))
    assert not (tmp_path / "run" / "plots" / "grad_scaler.png").exists()
    assert (tmp_path / "run" / "plots" / "loss.png").exists()

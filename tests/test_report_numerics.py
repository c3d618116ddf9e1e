"""The Numerics section of report.md, rendered from a hand-built timeline."""

from __future__ import annotations

from traindoctor.report.numerics import MAX_LAYERS, render_numerics
from traindoctor.testing import make_timeline


def test_gradient_table_has_first_median_last_max_and_nonfinite_count():
    steps = {
        1: {"grads.norm": {"fc.weight": 1.0, "fc.bias": 0.5}},
        10: {"grads.norm": {"fc.weight": 3.0, "fc.bias": float("inf")}},
        20: {"grads.norm": {"fc.weight": 2.0, "fc.bias": 0.25}},
    }
    text = "\n".join(render_numerics(make_timeline(params=["fc.weight", "fc.bias"], steps=steps)))
    assert "## Numerics" in text
    assert "sampled steps 1–20, 3 samples" in text
    assert "| `fc.weight` | 1 | 2 | 2 | 3 |  |" in text
    assert "| `fc.bias` | 0.5 | 0.375 | 0.25 | 0.5 | 1 |" in text


def test_scale_trace_and_skipped_steps():
    steps = {s: {"amp.scale": 65536.0 if s < 5 else 32768.0} for s in range(1, 9)}
    steps[5]["amp.skipped"] = 1
    text = "\n".join(render_numerics(make_timeline(params=["w"], steps=steps)))
    assert "step 1: 6.55e+04, step 5: 3.28e+04" in text
    assert "skipped steps: 1 (first at step 5)" in text


def test_loss_parts_shares_of_value_and_gradient():
    steps = {
        s: {
            "loss.parts": {"dfl": 9.0, "box": 0.5, "cls": 0.5},
            "loss.parts_grad": {"dfl": 8.0, "box": 1.0, "cls": 1.0},
        }
        for s in (1, 2)
    }
    text = "\n".join(render_numerics(make_timeline(params=["w"], steps=steps)))
    assert "| dfl | 9 | 90% | 80% |" in text
    assert "| box | 0.5 | 5% | 10% |" in text


def test_large_models_keep_the_most_extreme_rows():
    names = [f"l{i}.weight" for i in range(MAX_LAYERS * 2)]
    steps = {1: {"grads.norm": {n: float(i + 1) for i, n in enumerate(names)}}}
    lines = render_numerics(make_timeline(params=names, steps=steps))
    rows = [line for line in lines if line.startswith("| `")]
    assert len(rows) == MAX_LAYERS
    assert any("`l0.weight`" in r for r in rows) and any(
        f"`l{len(names) - 1}.weight`" in r for r in rows
    )


def test_nothing_to_show_renders_nothing():
    assert render_numerics(make_timeline(params=["w"])) == []

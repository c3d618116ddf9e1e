"""TD204 amp-scaled-grads-used on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["enc.weight", "enc.bias", "head.weight", "head.bias"]


def _misuse(what, steps, key_src="train.py:40", norm=None, scale=65536.0, **facts):
    key = f"{what}@{key_src}"
    signals = {}
    for s in steps:
        signals[s] = {"amp.misuse": {key: 1}, "amp.scale": scale, "optim.step": 1}
        if norm is not None:
            signals[s]["amp.misuse.norm"] = {key: norm}
        signals[s]["amp.misuse.scale"] = {key: scale}
    event = {
        "kind": "amp_misuse",
        "step": steps[0],
        "key": key,
        "what": what,
        "source": key_src,
        "optimizer": "opt0",
        "optimizer_class": "SGD",
        "params": PARAMS,
        "stage": facts.pop("stage", "READY"),
        **facts,
    }
    return make_timeline(params=PARAMS, steps=signals, events=[event])


def test_clip_before_unscale_names_the_line_and_the_shrink():
    tl = _misuse("clip_grad_norm_", [1, 2, 3], norm=3.0 * 65536, threshold=1.0)
    f = assert_fires("TD204", tl)
    assert f.where.source == "train.py:40"
    assert f.where.op == "clip_grad_norm_"
    assert f.where.params == tuple(PARAMS)
    assert f.step == 1
    assert f.evidence["scale"] == 65536.0
    assert f.evidence["norm_true"] == 3.0
    # true norm 3 > max_norm 1: intended norm 1, applied 1/65536
    assert f.evidence["update_shrunk_by"] == 65536.0
    assert "1/65536" in f.title
    assert "unscale_" in f.fix


def test_clip_value_before_unscale():
    tl = _misuse("clip_grad_value_", [2, 3], norm=655.36, threshold=0.5)
    f = assert_fires("TD204", tl)
    assert f.evidence["max_abs_grad_true"] == 655.36 / 65536
    assert f.evidence["effective_clip_value"] == 0.5 / 65536


def test_direct_optimizer_step():
    tl = _misuse("optimizer.step", [1, 2], key_src="train.py:55", norm=65536.0 * 2)
    f = assert_fires("TD204", tl)
    assert f.where.op == "optimizer.step"
    assert f.evidence["grad_norm_true"] == 2.0
    assert "scaler.step(optimizer)" in f.fix
    assert "65536x" in f.title


def test_direct_step_after_unscale_says_skips_are_lost():
    tl = _misuse("optimizer.step", [1], key_src="train.py:55", stage="UNSCALED")
    f = assert_fires("TD204", tl)
    assert "skipped" in f.title


def test_backward_after_unscale_names_both_lines():
    tl = _misuse(
        "backward_after_unscale", [1, 2, 3], key_src="train.py:30", unscale_source="train.py:32"
    )
    f = assert_fires("TD204", tl)
    assert f.where.source == "train.py:30"
    assert f.evidence["unscale_source"] == "train.py:32"
    assert "mixed" in f.title


def test_two_kinds_of_misuse_are_two_findings():
    tl = _misuse("clip_grad_norm_", [1, 2], norm=1e5, threshold=1.0)
    tl.record(1, "amp.misuse", 1, key="optimizer.step@train.py:55")
    tl.event(
        1,
        "amp_misuse",
        key="optimizer.step@train.py:55",
        what="optimizer.step",
        source="train.py:55",
        optimizer="opt0",
        params=PARAMS,
        stage="READY",
    )
    assert_fires("TD204", tl, count=2)


def test_silent_without_misuse():
    tl = make_timeline(
        params=PARAMS, steps={s: {"amp.scale": 65536.0, "optim.step": 1} for s in range(1, 30)}
    )
    assert_silent("TD204", tl)


def test_a_norm_clip_that_never_bit_is_a_warning():
    """The wrong order, but even the scaled norm stayed under max_norm at every measured step:
    nothing was clipped either way, so no update of this run has changed yet."""
    tl = _misuse("clip_grad_norm_", [1, 2, 3], norm=3.0 * 65536, threshold=1e9)
    f = assert_fires("TD204", tl)
    assert f.severity.value == "warning"
    assert f.evidence["never_clipped"] == 3 and "update_shrunk_by" not in f.evidence
    assert "clipped at none of the 3 measured steps" in f.title
    # Clipped at one step of three: an error.
    tl = _misuse("clip_grad_norm_", [1, 2, 3], norm=3.0 * 65536, threshold=1e5)
    assert assert_fires("TD204", tl).severity.value == "error"

"""TD205 grad-scaler-collapse on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["stem.weight", "stem.bias", "body.weight", "body.bias", "head.weight", "head.bias"]


def _run(n, skipped, scale_of, nonfinite=None):
    steps = {}
    for s in range(1, n + 1):
        sig = {"amp.scale": scale_of(s)}
        if s in skipped:
            sig["amp.skipped"] = 1
            if nonfinite is not None:
                sig["amp.nonfinite"] = {p: float(p in nonfinite) for p in PARAMS}
        else:
            sig["optim.step"] = 1
        steps[s] = sig
    return make_timeline(
        params=PARAMS,
        steps=steps,
        events=[{"kind": "scaler_step", "step": 1, "source": "train.py:70"}],
    )


def test_every_step_skipped_names_the_layer_closest_to_the_loss():
    # NaN from `body` spreads to `stem` before it; `head` after it stays finite.
    bad = {"stem.weight", "stem.bias", "body.weight", "body.bias"}
    tl = _run(30, set(range(1, 31)), lambda s: 65536.0 / 2**s, nonfinite=bad)
    f = assert_fires("TD205", tl)
    assert f.where.module == "body"
    assert f.where.params == ("body.bias", "body.weight")
    assert f.where.source == "train.py:70"
    assert f.step == 1
    assert f.evidence["skipped_total"] == 30
    assert "body" in f.title


def test_scale_collapse_without_localization_still_fires():
    tl = _run(30, set(range(5, 31, 2)), lambda s: 65536.0 / 2 ** min(s, 20))
    f = assert_fires("TD205", tl)
    assert f.where.module is None
    assert "not measured" in f.cause


def test_backoff_at_start_is_not_reported():
    # a float16 run: 5 skips while the scale finds its level, then none
    tl = _run(40, {1, 2, 3, 4, 5}, lambda s: 65536.0 / 2 ** min(s, 5))
    assert_silent("TD205", tl)


def test_occasional_skips_are_fine():
    tl = _run(60, {10, 25, 40, 55}, lambda s: 32768.0)
    assert_silent("TD205", tl)


def test_too_few_steps_to_judge():
    tl = _run(10, set(range(1, 11)), lambda s: 65536.0 / 2**s)
    assert_silent("TD205", tl)


def test_healthy_scaler_silent():
    tl = make_timeline(
        params=PARAMS, steps={s: {"amp.scale": 65536.0, "optim.step": 1} for s in range(1, 50)}
    )
    assert_silent("TD205", tl)

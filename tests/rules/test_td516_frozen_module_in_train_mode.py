"""TD516 frozen-module-in-train-mode on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _event(step, bn_train=(), dropout=(), out_grad=False):
    return {
        "kind": "frozen_modules",
        "step": step,
        "modules": {
            "backbone": {
                "bn_train": list(bn_train),
                "bn_count": 2,
                "dropout_train": list(dropout),
                "output_requires_grad": out_grad,
            }
        },
    }


def _drift(value):
    return {
        s: {"modes.frozen_bn_drift": {"backbone.1": value, "backbone.4": value / 2}}
        for s in (2, 3, 10)
    }


def test_fires_on_drifting_bn_in_train_mode():
    tl = make_timeline(steps=_drift(0.05), events=[_event(1, ["backbone.1", "backbone.4"])])
    f = assert_fires("TD516", tl)
    assert f.where.module == "backbone"
    assert f.evidence["bn_drift"]["backbone.1"] == 0.05
    assert f.step == 2
    assert "backbone.eval()" in f.fix


def test_silent_for_frozen_bn_in_eval_mode():
    # backbone.eval() after model.train(): the statistics do not move.
    assert_silent("TD516", make_timeline(steps=_drift(0.0), events=[_event(1)]))


def test_silent_when_in_train_mode_but_stats_do_not_change():
    # momentum=0 (or stats that never update): nothing drifts, nothing to report.
    tl = make_timeline(steps=_drift(0.0), events=[_event(1, ["backbone.1"])])
    assert_silent("TD516", tl)


def test_dropout_only_when_the_frozen_output_has_no_graph():
    tl = make_timeline(steps={1: {}}, events=[_event(1, dropout=["backbone.2"])])
    f = assert_fires("TD516", tl)
    assert f.evidence["dropout_in_train_mode"] == ["backbone.2"]
    # Gradient flows through it (a frozen block between trainable ones, LoRA): not reported.
    through = make_timeline(
        steps={1: {}}, events=[_event(1, dropout=["backbone.2"], out_grad=True)]
    )
    assert_silent("TD516", through)


def test_silent_without_frozen_modules():
    assert_silent("TD516", make_timeline(steps={1: {}, 2: {}}))


def test_silent_when_the_frozen_params_move_an_ema_target():
    # BYOL's target network, MoCo's key encoder, a mean teacher: requires_grad off, no optimizer,
    # but updated in place from the trained weights, in train mode by the method's design.
    steps = _drift(0.05)
    for s in steps:
        steps[s]["modes.frozen_params_moved"] = {"backbone": 0.004}
    tl = make_timeline(steps=steps, events=[_event(1, ["backbone.1", "backbone.4"])])
    assert_silent("TD516", tl)
    # Params that stay put (a frozen pretrained backbone): still reported.
    for s in steps:
        steps[s]["modes.frozen_params_moved"] = {"backbone": 0.0}
    tl = make_timeline(steps=steps, events=[_event(1, ["backbone.1", "backbone.4"])])
    assert_fires("TD516", tl)

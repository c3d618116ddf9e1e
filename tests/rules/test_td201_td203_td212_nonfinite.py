"""TD201 nonfinite-loss, TD202 nonfinite-grad, TD203 nonfinite-activation and TD212
nonfinite-masked on hand-built timelines (the events the numerics probe's autopsy writes)."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["fc1.weight", "fc1.bias", "head.weight", "head.bias"]


def _tl(events, bad_steps=(5,), checked_steps=range(1, 8)):
    steps = {s: {"numerics.checked": {"loss": int(s not in bad_steps)}} for s in checked_steps}
    for s in bad_steps:
        steps[s]["numerics.nonfinite"] = ["loss"]
    return make_timeline(params=PARAMS, steps=steps, events=events)


LOSS_EVENT = {
    "kind": "nonfinite",
    "step": 5,
    "first": "loss",
    "loss": "nan",
    "loss_finite": False,
    "model_output_finite": True,
    "culprits": [{"op": "log", "node": "LogBackward0", "fraction": 0.02, "measured": True}],
    "op": "log",
    "source": "train.py:33",
}
ACT_EVENT = {
    "kind": "nonfinite",
    "step": 4,
    "first": "activation",
    "module": "fc1",
    "op": "linear",
    "source": "model.py:20",
    "fraction": 0.2,
    "nonfinite_modules": ["fc1", "head"],
}
GRAD_EVENT = {
    "kind": "nonfinite",
    "step": 6,
    "first": "grad",
    "module": "head",
    "params": ["head.weight"],
    "loss": 0.7,
    "loss_finite": True,
}
MASK_EVENT = {
    "kind": "nonfinite_masked",
    "step": 2,
    "module": "norm",
    "input": False,
    "fraction": 0.06,
    "op": "div",
    "source": "model.py:19",
    "mask": {
        "op": "nan_to_num",
        "source": "model.py:32",
        "grad_finite_elements": 1.0,
        "grad_masked_elements": 0.0,
        "masked_fraction": 0.06,
    },
}


def test_td201_names_the_op_and_line_of_the_loss():
    f = assert_fires("TD201", _tl([LOSS_EVENT]))
    assert f.step == 5
    assert f.where.op == "log" and f.where.source == "train.py:33"
    assert "finite input" in f.cause and "replayed model outputs were all finite" in f.cause
    assert f.evidence["first_nonfinite_step"] == 5


def test_td201_silent_without_a_loss_event():
    assert_silent("TD201", _tl([ACT_EVENT]))
    assert_silent("TD201", _tl([], bad_steps=()))


def test_td203_names_the_first_module_and_only_once_per_place():
    later = {**ACT_EVENT, "step": 9}
    f = assert_fires("TD203", _tl([ACT_EVENT, later]))
    assert (f.where.module, f.where.op, f.where.source) == ("fc1", "linear", "model.py:20")
    assert f.step == 4
    assert_silent("TD202", _tl([ACT_EVENT]))


def test_td203_input_batch():
    f = assert_fires(
        "TD203", _tl([{"kind": "nonfinite", "step": 2, "first": "input", "module": "<input>"}])
    )
    assert "input batch" in f.title


def test_td202_gradient_made_by_backward():
    f = assert_fires("TD202", _tl([GRAD_EVENT]))
    assert f.where.module == "head" and f.where.params == ("head.weight",)
    assert "backward produced" in f.cause


def test_td202_weights_already_nonfinite():
    e = {
        "kind": "nonfinite",
        "step": 3,
        "first": "param",
        "module": "fc1",
        "params": ["fc1.weight", "head.weight"],
    }
    f = assert_fires("TD202", _tl([e]))
    assert f.title.startswith("weights of `fc1`")
    assert_silent("TD201", _tl([e]))
    assert_silent("TD203", _tl([e]))


def test_td212_names_module_mask_and_measured_gradient():
    f = assert_fires("TD212", _tl([MASK_EVENT, {**MASK_EVENT, "step": 4}], bad_steps=()))
    assert f.where.module == "norm"
    assert (f.where.op, f.where.source) == ("nan_to_num", "model.py:32")
    assert "gradient of 1 to the finite elements and 0" in f.cause
    assert "`div` at model.py:19" in f.cause


def test_td212_without_mask_details_and_silent_when_nothing_masked():
    e = {k: v for k, v in MASK_EVENT.items() if k != "mask"}
    f = assert_fires("TD212", _tl([e], bad_steps=()))
    assert f.where.source == "model.py:19"
    assert_silent("TD212", _tl([LOSS_EVENT]))

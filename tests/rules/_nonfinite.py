"""Timelines and `nonfinite` events as the numerics probe's autopsy writes them, shared by the
TD201, TD202, TD203 and TD212 tests."""

from __future__ import annotations

from traindoctor.testing import make_timeline

PARAMS = ["fc1.weight", "fc1.bias", "head.weight", "head.bias"]


def nonfinite_tl(events, bad_steps=(5,), checked_steps=range(1, 8)):
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

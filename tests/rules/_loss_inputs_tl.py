"""Hand-built timelines of the loss-inputs probe for TD506-TD512 tests."""

from __future__ import annotations

from traindoctor.testing import make_timeline

# The loss-input event of a supervised cross-entropy at site 0: a loss meant to fall
# (rules/_objective.py), for the rules that judge only such losses.
SUPERVISED_CE = {
    "kind": "loss_input",
    "step": 1,
    "site": 0,
    "fn": "cross_entropy",
    "classes": 3,
    "input_shape": [32, 3],
    "target_float": False,
    "source": "train.py:86",
}


def site_timeline(
    event: dict,
    stats: dict[int, dict],
    labels: dict[int, list] | None = None,
    extra: dict[int, dict] | None = None,
):
    steps: dict[int, dict] = {}
    for step, values in stats.items():
        steps.setdefault(step, {})["loss_inputs.stats"] = {f"0.{k}": v for k, v in values.items()}
    for step, counts in (labels or {}).items():
        steps.setdefault(step, {})["loss_inputs.labels"] = {
            f"0.{c}": float(n) for c, n in enumerate(counts)
        }
    for step, values in (extra or {}).items():
        steps.setdefault(step, {}).update(values)
    ev = {
        "kind": "loss_input",
        "step": min(stats or labels or {1: 0}),
        "site": 0,
        "source": "train.py:12",
        "producer": [],
        **event,
    }
    return make_timeline(params=["w"], steps=steps, events=[ev])

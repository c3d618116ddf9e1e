"""Hand-built timelines of the loss-inputs probe for TD506-TD512 tests."""

from __future__ import annotations

from traindoctor.testing import make_timeline


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

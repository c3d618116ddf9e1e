"""grads.carried leaves a None gradient's 0 out of the record; TD106 reads a trainable param
missing from it as 0. Several backward passes in one step keep the smallest norm."""

from __future__ import annotations

import torch
from torch import nn

from tests._loop import watch

torch.set_num_threads(1)


def _run(tmp_path, passes: int, zero: str, steps: int = 12, grow: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doc = watch(model, opt, tmp_path)
    for step in range(steps):
        if grow and step == 1:
            model.append(nn.Linear(2, 2))  # params the inventory (made at attach) lacks
            opt.add_param_group({"params": model[3].parameters()})
        if zero == "start":
            opt.zero_grad(set_to_none=True)
        for i in range(passes):
            if zero == "between" and i == passes - 1:
                opt.zero_grad(set_to_none=True)  # the earlier passes' grads are dropped
            model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        doc.log(loss=torch.tensor(float(step)))
    doc.close()
    return doc


def _values(doc, names):
    series = doc.timeline.series("grads.carried")
    assert len(series) >= 3
    return {s: {n: c.get(n, 0.0) for n in names} for s, c in series}


NAMES = ("0.weight", "0.bias", "2.weight", "2.bias")


def test_accumulation_after_zero_grad_is_all_zero_and_sparse(tmp_path):
    doc = _run(tmp_path, passes=3, zero="start")
    for _, c in doc.timeline.series("grads.carried"):
        assert c == {}  # a None before the first pass: nothing written, 0 for every param
    assert "TD106" not in doc.report.codes


def test_never_zeroed_with_accumulation_carries_every_param(tmp_path):
    doc = _run(tmp_path, passes=2, zero="none")
    for s, vals in _values(doc, NAMES).items():
        if s >= 2:
            assert all(v > 0 for v in vals.values())
    assert "TD106" in doc.report.codes


def test_zeroed_between_passes_is_zero(tmp_path):
    # The first pass finds last step's grads (a norm queued), the last finds None: min is 0.
    doc = _run(tmp_path, passes=2, zero="between")
    for vals in _values(doc, NAMES).values():
        assert all(v == 0.0 for v in vals.values())
    assert "TD106" not in doc.report.codes


def test_a_param_outside_the_inventory_keeps_its_zero_written(tmp_path):
    doc = _run(tmp_path, passes=1, zero="start", grow=True)
    assert "3.weight" not in doc.timeline.facts["params"]
    later = [c for s, c in doc.timeline.series("grads.carried") if s >= 3]
    assert later and all(c == {"3.weight": 0.0, "3.bias": 0.0} for c in later)
    assert "TD106" not in doc.report.codes

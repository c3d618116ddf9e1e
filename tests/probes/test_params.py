"""ParamsProbe: measured updates and norms against brute force; the inventory and replacements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests._loop import OPTIMIZERS, Oracle, make_model, train, watch


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_update_equals_brute_force(tmp_path, opt_name):
    model = make_model()
    opt = OPTIMIZERS[opt_name](model)
    doc = watch(model, opt, tmp_path)
    oracle = Oracle()
    train(model, opt, 21, doc=doc, oracle=oracle)
    doc.close()
    updates = dict(doc.timeline.series("params.update"))
    norms = dict(doc.timeline.series("params.norm"))
    assert {1, 2, 3, 10, 20} <= set(updates)
    assert set(updates) == set(norms)
    for step, upd in updates.items():
        assert set(upd) == set(oracle.updates[step])
        for name, value in upd.items():
            assert value == pytest.approx(oracle.updates[step][name], rel=1e-6, abs=1e-12)
            assert value > 0
            assert norms[step][name] == pytest.approx(oracle.param_norms[step][name], rel=1e-6)


def test_lr_zero_gives_exactly_zero_update(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    doc = watch(model, opt, tmp_path)
    train(model, opt, 3, doc=doc)
    doc.close()
    for _, upd in doc.timeline.series("params.update"):
        assert set(upd.values()) == {0.0}
    assert "TD104" in doc.report.codes


def test_inventory_fact(tmp_path):
    model = make_model()
    model[0].bias.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    doc = watch(model, opt, tmp_path)
    doc.close()
    params = doc.timeline.facts["params"]
    assert list(params) == [n for n, _ in model.named_parameters()]
    assert params["0.weight"] == {
        "shape": [16, 6],
        "dtype": "float32",
        "numel": 96,
        "requires_grad": True,
    }
    assert params["0.bias"]["requires_grad"] is False
    assert "TD103" not in doc.report.codes


def test_replaced_params_are_recorded_by_name(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, opt, tmp_path)
    torch.manual_seed(3)
    model[3] = nn.Linear(16, 3)
    train(model, opt, 3, doc=doc)
    doc.close()
    _, replaced = doc.timeline.series("params.replaced")[0]
    assert sorted(replaced) == ["3.bias", "3.weight"]
    assert "TD111" in doc.report.codes

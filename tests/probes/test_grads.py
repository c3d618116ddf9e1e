"""GradsProbe: recorded gradient facts against brute force computed by the test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests._loop import OPTIMIZERS, Oracle, make_model, make_scaler, train, watch


@pytest.mark.parametrize("scaler_kind", [None, "enabled"])
def test_grad_norm_equals_brute_force(tmp_path, scaler_kind):
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    scaler = make_scaler(scaler_kind)
    doc = watch(model, opt, tmp_path, scaler=scaler)
    oracle = Oracle()
    train(model, opt, 21, doc=doc, scaler=scaler, oracle=oracle)
    doc.close()
    series = dict(doc.timeline.series("grads.norm"))
    assert {1, 2, 3, 10, 20} <= set(series), sorted(series)
    for step, norms in series.items():
        assert set(norms) == set(oracle.grad_norms[step])
        for name, value in norms.items():
            assert value == pytest.approx(oracle.grad_norms[step][name], rel=1e-6), (step, name)


def test_grad_norm_with_accumulation_is_the_accumulated_grad(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    doc = watch(model, opt, tmp_path)
    oracle = Oracle()
    train(model, opt, 4, doc=doc, accum=3, oracle=oracle)
    doc.close()
    for step, norms in doc.timeline.series("grads.norm"):
        for name, value in norms.items():
            assert value == pytest.approx(oracle.grad_norms[step][name], rel=1e-6)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.aux = nn.Linear(4, 2)

    def forward(self, x):
        h = self.body(x)
        self.aux(h)  # computed, left out of the loss
        return self.head(h)


def _two_heads(tmp_path, steps=3, zero_between=False):
    model = TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, opt, tmp_path)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        if zero_between:
            opt.zero_grad()
        opt.step()
    doc.close()
    return doc


def test_grads_none_lists_exactly_the_params_backward_never_reaches(tmp_path):
    doc = _two_heads(tmp_path)
    series = doc.timeline.series("grads.none")
    assert [s for s, _ in series] == [1, 2, 3]
    for _, names in series:
        assert sorted(names) == ["aux.bias", "aux.weight"]
    assert not doc.timeline.series("grads.cleared")
    assert set(doc.timeline.series("grads.norm")[0][1]) == {
        "body.weight",
        "body.bias",
        "head.weight",
        "head.bias",
    }


def test_grads_cleared_when_zero_grad_runs_between_backward_and_step(tmp_path):
    doc = _two_heads(tmp_path, zero_between=True)
    _, cleared = doc.timeline.series("grads.cleared")[0]
    assert sorted(cleared) == ["body.bias", "body.weight", "head.bias", "head.weight"]


def test_carried_grad_norm_equals_brute_force_without_zero_grad(tmp_path):
    model = make_model(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doc = watch(model, opt, tmp_path)
    oracle = Oracle()
    train(model, opt, 11, doc=doc, zero_grad=False, oracle=oracle)
    doc.close()
    series = dict(doc.timeline.series("grads.carried"))
    assert {2, 3, 10} <= set(series)
    names = {n for n, _ in model.named_parameters()}
    for step, norms in series.items():
        # Every param the optimizer stepped is judged; one whose .grad was None is 0, left out
        # of the record (a trainable param missing from it reads as 0).
        assert set(norms) <= names
        for name in names:
            value = norms.get(name, 0.0)
            assert value == pytest.approx(oracle.carried[step].get(name, 0.0), rel=1e-6)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_nothing_carried_with_zero_grad(tmp_path, set_to_none):
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    doc = watch(model, opt, tmp_path)
    train(model, opt, 4, doc=doc, set_to_none=set_to_none)
    doc.close()
    for _, norms in doc.timeline.series("grads.carried"):
        # zeroed to None, or zeros left in .grad (set_to_none=False): judged, and zero
        assert all(v == 0.0 for v in norms.values())
    assert "TD106" not in doc.report.codes

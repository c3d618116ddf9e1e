"""ParamsProbe: measured updates and norms against brute force; the inventory and replacements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests._loop import OPTIMIZERS, Oracle, make_model, train, watch
from traindoctor.probes._param_stats import FLAT_MIN_TENSORS, flat_lengths, norms, pack


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


def test_many_small_tensors_are_measured_flat_and_equal_brute_force(tmp_path):
    # 300+ small CPU tensors: one flat copy and segment norms (flat_lengths), not foreach ops.
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(150)]
    model = nn.Sequential(nn.Linear(6, 16), *blocks, nn.Linear(16, 3))
    assert len(list(model.parameters())) >= FLAT_MIN_TENSORS
    assert flat_lengths([p.detach() for p in model.parameters()]) is not None
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    doc = watch(model, opt, tmp_path)
    oracle = Oracle()
    train(model, opt, 4, doc=doc, oracle=oracle)
    doc.close()
    updates = dict(doc.timeline.series("params.update"))
    norms = dict(doc.timeline.series("params.norm"))
    grad_norms = dict(doc.timeline.series("grads.norm"))  # packed with the params' lengths
    assert {1, 2, 3} <= set(updates) and {1, 2, 3} <= set(grad_norms)
    for step, upd in updates.items():
        assert list(upd) == [n for n, _ in model.named_parameters()]
        for name, value in upd.items():
            assert value == pytest.approx(oracle.updates[step][name], rel=1e-6, abs=1e-12)
            assert norms[step][name] == pytest.approx(oracle.param_norms[step][name], rel=1e-6)
            want = oracle.grad_norms[step][name]
            assert grad_norms[step][name] == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_packed_norms_equal_each_tensors_norm():
    tensors = [torch.randn(5, 3), torch.randn(1), torch.full((4,), 1e25), torch.zeros(7)]
    tensors.append(torch.tensor([float("nan"), 1.0]))
    tensors.append(torch.randn(5, 3))  # a second tensor of the first's shape: packed beside it
    flat, made = pack(tensors, [t.numel() for t in tensors])
    got = made.norms(flat)
    assert got.dtype == torch.float32
    for i in (0, 1, 5):
        assert got[i].item() == pytest.approx(tensors[i].norm().item(), rel=1e-6)
    assert got[2].item() == pytest.approx(2e25, rel=1e-6)  # no float32 overflow of squares
    assert got[3].item() == 0.0
    assert got[4].isnan()


def test_norms_of_many_small_tensors_match_foreach_norm():
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3,), (2, 2, 2)] * (FLAT_MIN_TENSORS // 3 + 1)
    tensors = [torch.randn(s, generator=gen) for s in shapes]
    assert flat_lengths(tensors) is not None  # the packed path
    [(_, got)] = norms(tensors)
    want = torch.stack(torch._foreach_norm(tensors))
    assert torch.allclose(got, want, rtol=1e-6)

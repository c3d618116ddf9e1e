"""Zero-code attach finds its models in the heap scan that the copies probe then reuses."""

from __future__ import annotations

import gc

import torch
from torch import nn

from traindoctor.doctor import Doctor
from traindoctor.integrations.autopatch import _owning_models, attached

torch.set_num_threads(1)


def _owning_models_before(param_ids: set[int]) -> list[nn.Module]:
    """The implementation this one replaced (its own scan of gc.get_objects)."""
    modules = [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]
    children = {id(c) for m in modules for c in m._modules.values() if c is not None}
    return [
        m
        for m in modules
        if id(m) not in children and any(id(p) in param_ids for p in m.parameters())
    ]


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Sequential(nn.Linear(3, 2), nn.ReLU())


def test_same_models_in_the_same_order_as_the_own_scan():
    models = [Pair(), nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), Pair()]
    free = nn.Linear(5, 5)  # held by no optimizer: not an owner
    ids = {id(p) for m in models for p in m.parameters()} | {id(models[0].b[0].weight)}
    found = _owning_models(ids)
    assert [id(m) for m in found] == [id(m) for m in _owning_models_before(ids)]
    assert {id(m) for m in found} == {id(m) for m in models}
    assert id(free) not in {id(m) for m in found}
    assert _owning_models(set()) == []


def test_one_heap_scan_per_attach(tmp_path, monkeypatch):
    scans = []
    real = gc.get_objects
    monkeypatch.setattr(gc, "get_objects", lambda *a, **k: scans.append(1) or real(*a, **k))
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        model = Pair()
        copy = Pair()
        copy.load_state_dict(model.state_dict())  # an unwatched copy: the copies probe's scan
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(2):
            opt.zero_grad()
            model.b(model.a(torch.randn(4, 3))).sum().backward()  # attaches at the first
            opt.step()
            if step == 0:
                attach_scans = len(scans)
    doctor.close()
    assert attach_scans == 1  # was 2: the models' scan, then the copies probe's
    assert set(doctor.timeline.facts["params"]) == {"a.weight", "a.bias", "b.0.weight", "b.0.bias"}

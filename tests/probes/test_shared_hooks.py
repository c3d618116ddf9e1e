"""The structural probes hook every module with one shared hook object (issue 15): the same
facts as a closure per module, a module shared by two watched models still seen under both
names, and a model's hooks gone when the structural steps end."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import traindoctor as td
from traindoctor.probes.base import GuardedHook


def _hooks(module: nn.Module, where: str) -> list[GuardedHook]:
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return [h for h in hooks if isinstance(h, GuardedHook) and h.where == where]


def _train(doc: td.Doctor, models: list[nn.Module], opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=g)
        opt.zero_grad()
        loss = sum(m(x).pow(2).mean() for m in models)
        loss.backward()
        opt.step()
        doc.log(loss=loss)


@pytest.mark.slow
def test_one_hook_object_per_probe_for_every_module(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(4, 4) for _ in range(6)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False, export=None)
    for where in ("probe forward", "probe init", "probe work"):
        objects = {id(h) for m in model.modules() for h in _hooks(m, where)}
        assert len(objects) == 1, where
    _train(doc, [model], opt, 1)
    calls = doc.timeline.series("forward.calls")[0][1]
    assert set(calls) == {"<model>", *(str(i) for i in range(6))}
    assert all(c["calls"] == 1 and c["output_requires_grad"] for c in calls.values())
    stds = doc.timeline.series("init.out_std")[0][1]
    assert set(stds) == {str(i) for i in range(6)}
    _train(doc, [model], opt, 3)
    assert not any(_hooks(m, "probe forward") for m in model.modules())  # structural end
    doc.close()


@pytest.mark.slow
def test_a_module_shared_by_two_models_is_seen_under_both_names(tmp_path):
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    a = nn.Sequential(shared, nn.Tanh())
    b = nn.Sequential(nn.Identity(), shared)
    params = {id(p): p for p in [*a.parameters(), *b.parameters()]}
    opt = torch.optim.SGD(list(params.values()), lr=0.01)
    doc = td.watch({"a": a, "b": b}, opt, out_dir=tmp_path, console=False, export=None)
    _train(doc, [a, b], opt, 1)
    calls = doc.timeline.series("forward.calls")[0][1]
    assert {"a.0", "b.1"} <= set(calls)
    # the module runs once in each model's forward: both hooks see both calls
    assert calls["a.0"]["calls"] == calls["b.1"]["calls"] == 2
    stds = doc.timeline.series("init.out_std")[0][1]
    assert {"a.0", "b.1"} <= set(stds)
    doc.close()

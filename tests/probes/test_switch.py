"""HookSwitch: hooks registered once, switched on and off without re-registering."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor._guard import Guard
from traindoctor.budget import Budget
from traindoctor.bus import Bus
from traindoctor.probes._switch import HookSwitch
from traindoctor.probes.base import AttachContext, Recorder, RunContext
from traindoctor.run_state import RunState
from traindoctor.timeline import Timeline


def _ctx(model: nn.Module) -> AttachContext:
    rec = Recorder(Timeline())
    state, guard = RunState(), Guard()
    run = RunContext(state, guard, Budget(), rec, Bus(guard, state))
    return AttachContext(run, {"": model}, [], None, "watch")


def test_off_leaves_torch_fast_path_and_on_restores_every_flag():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    ctx = _ctx(model)
    calls: list[str] = []
    switch = HookSwitch(ctx)
    for m in model:
        switch.forward_pre_hook("", m, lambda mod, a, k: calls.append("pre"), with_kwargs=True)
        switch.forward_hook("", m, lambda mod, a, o: calls.append("post"), always_call=True)
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_always_called")
    hook_dicts += ("_forward_pre_hooks_with_kwargs",)
    assert all(not getattr(m, d) for m in model for d in hook_dicts)
    model(torch.randn(2, 4))
    assert calls == []
    switch.on()
    assert all(getattr(m, d) for m in model for d in hook_dicts)
    model(torch.randn(2, 4))
    assert calls == ["pre", "post", "pre", "post"]
    switch.off()
    model(torch.randn(2, 4))
    assert len(calls) == 4
    switch.on()
    switch.remove()
    assert all(not getattr(m, d) for m in model for d in hook_dicts)


def test_switching_keeps_each_hook_dicts_order_and_the_users_hooks():
    """An OrderedDict switched through its own methods: its iteration (which runs the hooks)
    sees ours, in the order registered, after the user's hooks registered before."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    calls: list[str] = []
    model[0].register_forward_pre_hook(lambda mod, a: calls.append("user"))
    switch = HookSwitch(_ctx(model))
    for tag in ("a", "b"):
        switch.forward_pre_hook("", model[0], lambda mod, a, tag=tag: calls.append(tag))
    for _ in range(3):
        switch.on()
        model(torch.randn(2, 4))
        switch.off()
    assert calls == ["user", "a", "b"] * 3
    assert list(model[0]._forward_pre_hooks) == list(model[0]._forward_pre_hooks.keys())
    assert len(model[0]._forward_pre_hooks) == 1


def test_a_model_found_compiled_is_never_switched_on_again():
    model = nn.Linear(4, 4)
    ctx = _ctx(model)
    switch = HookSwitch(ctx)
    switch.forward_hook("", model, lambda *a: None)
    ctx.compiled.add("")
    switch.on()
    assert not model._forward_hooks


def test_sampled_steps_register_no_hook_after_attach(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(8, 8), nn.ReLU())])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    counted = []
    original = nn.Module.register_forward_hook

    def counting(self, *args, **kwargs):
        counted.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "register_forward_hook", counting)
    g = torch.Generator().manual_seed(1)
    for _ in range(25):  # steps 1-3, then sampled steps 10 and 20
        opt.zero_grad()
        F.mse_loss(model(torch.randn(4, 8, generator=g)), torch.zeros(4, 8)).backward()
        opt.step()
    doc.close()
    # Only the numerics probe's loss-window hook on the root, in structural steps 2 and 3.
    assert counted == ["Sequential", "Sequential"]

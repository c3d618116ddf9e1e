"""ForwardHooks: many modules' forward hooks, no handle kept, removed exactly."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from traindoctor.probes._module_hooks import ForwardHooks


def test_remove_takes_off_ours_only_and_leaves_torch_fast_path():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    seen: list[str] = []
    user = model[0].register_forward_hook(lambda m, i, o: seen.append("user"))
    always = model[2].register_forward_hook(lambda m, i, o: None, always_call=True)
    hooks = ForwardHooks()
    for m in model.modules():
        hooks.add(m, lambda m, i, o: seen.append(type(m).__name__))
    assert len(hooks) == 4
    model(torch.ones(1, 2))
    assert seen == ["user", "Linear", "ReLU", "Linear", "Sequential"]
    hooks.remove()
    assert len(hooks) == 0
    assert list(model[0]._forward_hooks) == [user.id]
    assert list(model[2]._forward_hooks) == [always.id]
    assert list(model[2]._forward_hooks_always_called) == [always.id]
    assert not model._forward_hooks and not model[1]._forward_hooks
    seen.clear()
    model(torch.ones(1, 2))
    assert seen == ["user"]
    hooks.remove()  # twice: nothing left to take


def test_a_copy_keeps_its_own_hooks_and_the_original_loses_ours():
    model = nn.Linear(2, 2)
    hooks = ForwardHooks()
    hooks.add(model, lambda m, i, o: None)
    twin = copy.deepcopy(model)
    hooks.remove()
    assert not model._forward_hooks
    assert len(twin._forward_hooks) == 1  # as a RemovableHandle leaves a copy's

"""AttachContext.named_params(): kept across steps, walked again whenever a walk would differ."""

from __future__ import annotations

import collections

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from traindoctor._guard import Guard
from traindoctor.budget import Budget
from traindoctor.bus import Bus
from traindoctor.probes._named_params import walk
from traindoctor.probes.base import AttachContext, Recorder, RunContext
from traindoctor.run_state import RunState
from traindoctor.timeline import Timeline


def _ctx(models: dict[str, nn.Module]) -> AttachContext:
    rec = Recorder(Timeline())
    state, guard = RunState(), Guard()
    run = RunContext(state, guard, Budget(), rec, Bus(guard, state))
    return AttachContext(run, models, [], None, "watch")


def _next_step(ctx: AttachContext) -> list[tuple[str, torch.nn.Parameter]]:
    ctx.new_step()
    got = ctx.named_params()
    want = walk(ctx.models)
    assert [n for n, _ in got] == [n for n, _ in want]
    assert all(a is b for (_, a), (_, b) in zip(got, want))
    return got


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_same_list_while_nothing_changes():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    ctx = _ctx({"": model})
    first = ctx.named_params()
    version = ctx.named_version
    for _ in range(3):
        assert _next_step(ctx) is first
    assert ctx.named_version == version


def test_every_change_of_the_tree_is_seen():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    ctx = _ctx({"": model, "teacher.": nn.Sequential(shared)})
    ctx.named_params()
    changes = [
        lambda: setattr(model, "2", nn.Linear(3, 2)),  # a layer replaced
        lambda: setattr(model[0], "weight", nn.Parameter(torch.zeros(3, 3))),  # a param
        lambda: model[0].register_parameter("extra", nn.Parameter(torch.ones(1))),  # added
        lambda: delattr(model[0], "extra"),  # deleted
        lambda: model[0].register_parameter("bias", None),  # set to None
        lambda: model.append(nn.Linear(2, 2)),  # a module added
        lambda: parametrize.register_parametrization(model[2], "weight", _Double()),
        lambda: setattr(model, "3", shared),  # shared with the other model: listed once
        lambda: model[0]._parameters.update(w2=model[0]._parameters.pop("weight")),  # renamed
    ]
    for change in changes:
        before = ctx.named_params()
        version = ctx.named_version
        change()
        after = _next_step(ctx)
        assert after is not before
        assert ctx.named_version == version + 1


def test_models_dict_changes_are_seen():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    models = {"a.": a}
    ctx = _ctx(models)
    ctx.named_params()
    models["b."] = b
    assert len(_next_step(ctx)) == 4
    models["b."] = nn.Linear(2, 2)
    _next_step(ctx)


class _Renaming(nn.Module):
    """A wrapper whose named_parameters() lists other names than its dicts (as FSDP's)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)
        self.suffix = "a"

    def named_parameters(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        for name, p in super().named_parameters(*args, **kwargs):
            yield f"{name}.{self.suffix}", p


def test_overridden_walks_are_walked_at_each_check_and_equal_lists_kept():
    model = _Renaming()
    ctx = _ctx({"": model})
    first = ctx.named_params()
    version = ctx.named_version
    assert _next_step(ctx) is first  # walked again, found equal: the same list
    assert ctx.named_version == version
    model.suffix = "b"
    assert _next_step(ctx)[0][0] == "inner.weight.b"
    assert ctx.named_version == version + 1


def test_ordered_dict_params_are_walked_at_each_check():
    model = nn.Linear(2, 2)
    model._parameters = collections.OrderedDict(model._parameters)
    ctx = _ctx({"": model})
    ctx.named_params()
    model._parameters.move_to_end("weight")
    assert [n for n, _ in _next_step(ctx)] == ["bias", "weight"]


def test_no_check_within_a_step():
    model = nn.Sequential(nn.Linear(2, 2))
    ctx = _ctx({"": model})
    first = ctx.named_params()
    model.append(nn.Linear(2, 2))
    assert ctx.named_params() is first  # the step's list, as before (one walk a step)
    assert len(_next_step(ctx)) == 4

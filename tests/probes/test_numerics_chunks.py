"""The numerics probe's per-module finiteness values stacked in chunks as they come
(`_stack_tail`): on a model of hundreds of modules the first non-finite module is still the one
named, and the values read back are those of every module in order."""

from __future__ import annotations

import torch
from torch import nn

from tests._loop import watch
from traindoctor.probes.numerics import _CHUNK, FLAG_MODULES, _read_with_values

torch.set_num_threads(1)


class Blow(nn.Module):
    """Adds inf to its input where `on` (a constant: the gradients stay finite)."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.full_like(x, float("inf")) if self.on else x


class Many(nn.Module):
    """700 small layers (2 values each: two chunks and a tail), one non-finite module at
    layer 600, its inf masked by the parent's own nan_to_num: the loss stays finite."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(700))
        self.blow = Blow()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = torch.tanh(layer(x))
            if i == 600:
                x = torch.nan_to_num(self.blow(x), posinf=0.0, neginf=0.0)
        return x


def _run(tmp_path, model: nn.Module, steps: int, on_from: int):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doc = watch(model, opt, tmp_path)
    for step in range(1, steps + 1):
        model.blow.on = step >= on_from  # a broken module stays broken
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    return report


def test_masked_inf_after_several_chunks_names_its_module(tmp_path):
    assert 2 * _CHUNK < 2 * 701  # two chunks and a tail
    assert FLAG_MODULES < 703  # and its modules checked in groups, one a sampled step
    report = _run(tmp_path, Many(), 12, on_from=3)
    masked = report.timeline.events("nonfinite_masked")
    assert masked and masked[0]["module"] == "blow"
    checked = dict(report.timeline.series("numerics.checked"))
    assert checked[1]["activations"] == 1
    # named at the first step whose group held `blow` (the second sampled step after step 3)
    flagged = [s for s, c in checked.items() if s >= 3 and c.get("activations") == 0]
    assert flagged and masked[0]["step"] == flagged[0] > 3


class Through(Many):
    """The inf of `blow` (after the layers) runs through 900 ReLU modules before the parent
    masks it: a group of modules sees it first downstream; the module named is still `blow`."""

    def __init__(self) -> None:
        super().__init__()
        # 1,603 modules under the root: 4 groups; step 3 checks group 2 (the acts with
        # index 2 mod 4), not `blow` (index 701, group 1)
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(900))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        x = self.blow(x)
        for act in self.acts:
            x = act(x)
        return torch.nan_to_num(x, posinf=0.0, neginf=0.0)


def test_masked_inf_seen_downstream_in_a_group_names_the_first_module(tmp_path):
    report = _run(tmp_path, Through(), 4, on_from=3)
    masked = report.timeline.events("nonfinite_masked")
    assert masked and masked[0]["step"] == 3 and masked[0]["module"] == "blow"


def test_read_with_values_mixes_chunks_and_scalars_in_order():
    values = [torch.tensor([1.0, float("nan"), 2.0]), torch.tensor(3.0), torch.tensor(float("inf"))]
    values.append(torch.tensor([0.0, 1.0], dtype=torch.bfloat16))
    flags, finite = _read_with_values([torch.tensor(False), True], values)
    assert flags == [False, True]
    assert finite == [True, False, True, True, False, True, True]

"""The numerics probe's per-module finiteness values stacked in chunks as they come
(`_stack_tail`): on a model of hundreds of modules the first non-finite module is still the one
named, and the values read back are those of every module in order."""

from __future__ import annotations

import torch
from torch import nn

from tests._loop import watch
from traindoctor.probes.numerics import _CHUNK, _read_with_values

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


def test_masked_inf_after_several_chunks_names_its_module(tmp_path):
    assert 2 * _CHUNK < 2 * 701  # two chunks and a tail
    torch.manual_seed(0)
    model = Many()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doc = watch(model, opt, tmp_path)
    for step in range(1, 5):
        model.blow.on = step == 3
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    masked = report.timeline.events("nonfinite_masked")
    assert masked and masked[0]["step"] == 3 and masked[0]["module"] == "blow"
    checked = dict(report.timeline.series("numerics.checked"))
    assert checked[1]["activations"] == 1 and checked[3]["activations"] == 0


def test_read_with_values_mixes_chunks_and_scalars_in_order():
    values = [torch.tensor([1.0, float("nan"), 2.0]), torch.tensor(3.0), torch.tensor(float("inf"))]
    values.append(torch.tensor([0.0, 1.0], dtype=torch.bfloat16))
    flags, finite = _read_with_values([torch.tensor(False), True], values)
    assert flags == [False, True]
    assert finite == [True, False, True, True, False, True, True]

"""The work probe's flop estimate: `_own_params` reads `module.parameters(recurse=False)`."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from traindoctor.probes.work import _own_params, _weight_flops


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(3, 4))
        self.b = self.a  # registered twice: listed once
        self.register_parameter("c", None)


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


class _Listing(nn.Linear):
    def parameters(self, recurse: bool = True):  # noqa: ANN201
        yield self.weight  # its own listing: read as it is


def _reference(module: nn.Module, out: int) -> float:
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return float(out)
    flops = 0.0
    for p in module.parameters(recurse=False):
        if p.dim() >= 2 and p.shape[0]:
            flops += 2.0 * p.numel() * (out / p.shape[0])
    return flops or float(out)


def test_own_params_and_flops_are_torchs_listing():
    parametrized = nn.Linear(4, 5)
    parametrize.register_parametrization(parametrized, "weight", _Double())
    modules = [
        nn.Linear(3, 4),
        nn.Linear(3, 4, bias=False),
        nn.Conv2d(3, 8, 3),
        nn.LayerNorm(5),
        nn.ReLU(),
        nn.Embedding(10, 3),
        _Twice(),
        parametrized,
        nn.MultiheadAttention(8, 2),
        nn.LSTM(4, 5, 2),
        nn.BatchNorm2d(3),
        _Listing(3, 4),
    ]
    for m in modules:
        assert [id(p) for p in _own_params(m)] == [id(p) for p in m.parameters(recurse=False)]
        for out in (1, 7, 12345):
            assert _weight_flops(m, out) == _reference(m, out)

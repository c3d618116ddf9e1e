"""The data of the sampler scenarios: a small learnable data set, as a TensorDataset."""

from __future__ import annotations

import torch.nn as nn
from torch.utils.data import TensorDataset

from .._base import classification_data


def dataset(n: int = 256) -> TensorDataset:
    x, y = classification_data(n=n, seed=5)
    return TensorDataset(x, y)


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

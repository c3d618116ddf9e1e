"""Small models shared by the bundled scenarios (plain PyTorch, nothing from traindoctor)."""

from __future__ import annotations

import torch
import torch.nn as nn


class Classifier(nn.Module):
    """An MLP backbone and a linear classification head."""

    def __init__(self, dim: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class AuxClassifier(nn.Module):
    """A classifier with an auxiliary head (e.g. deep supervision) on the backbone features."""

    def __init__(self, dim: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.neck = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)
        self.aux_head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return self.head(self.neck(feats)), self.aux_head(feats)

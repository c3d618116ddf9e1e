"""Sequence models and data shared by the TD508 scenarios (plain PyTorch, nothing from
traindoctor): a time-major GRU classifier that pools over time with attention, and a
batch-first GRU tagger."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TimeMajorClassifier(nn.Module):
    """(T, B, F) sequences -> (B, C): a GRU (time-major, as nn.GRU defaults), attention pooling
    over time (a softmax over dim 0, the time steps: legitimately not the class dim), a linear
    head, and log-probabilities over `out_dim` of the (B, C) logits."""

    def __init__(self, features: int = 8, hidden: int = 24, classes: int = 4, out_dim: int = 1):
        super().__init__()
        self.rnn = nn.GRU(features, hidden)
        self.score = nn.Linear(hidden, 1)
        self.head = nn.Linear(hidden, classes)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)  # (T, B, H)
        weights = F.softmax(self.score(h).squeeze(-1), dim=0)  # (T, B): over time
        pooled = (weights.unsqueeze(-1) * h).sum(0)  # (B, H)
        return F.log_softmax(self.head(pooled), dim=self.out_dim)  # (B, C)


def sequence_classes(n: int = 512, steps: int = 6, features: int = 8, classes: int = 4, seed=0):
    """(n, T, F) sequences labelled by a fixed linear map of their time average."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    return x, (x.mean(1) @ w).argmax(1)


class Tagger(nn.Module):
    """(B, T) token ids -> (B, T, C) per-token logits: embedding, batch-first GRU, linear head."""

    def __init__(self, vocab: int = 20, hidden: int = 32, tags: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(tokens))
        return self.head(h)


def tagging_data(n: int = 512, length: int = 12, vocab: int = 20, tags: int = 5, seed: int = 0):
    """Token sequences whose tag depends on the token and its left neighbour."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, length), generator=g)
    left = torch.cat([torch.zeros(n, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    return tokens, (tokens + 2 * left) % tags

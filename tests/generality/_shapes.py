"""Model shapes and data the bundled scenarios do not use (they train an MLP on (B, 16) features
over 4 classes): a small CNN on (B, 1, 12, 12) images, a conv segmenter, a GRU over token ids
with a dict output, a transformer encoder, with other batch sizes and class counts. The
generality tests plant each rule's bug on one of these, beside its healthy twin, and judge both
through the public API only (td.watch, doc.log, doc.close)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

import traindoctor as td
from traindoctor.findings import Severity

torch.set_num_threads(1)


# -- models -----------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """(B, C_in, 12, 12) -> (B, classes): two convs (optionally BatchNorm), pooling, linear head."""

    def __init__(self, classes: int = 7, in_ch: int = 1, bn: bool = False, out: int | None = None):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 8, 3, padding=1),
            norm(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            norm(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, out or classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Segmenter(nn.Module):
    """(B, 1, H, W) -> (B, classes, H, W) per-pixel logits from a 1x1 conv."""

    def __init__(self, classes: int = 6):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(12, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class GRUNet(nn.Module):
    """(B, T) token ids -> {"logits": (B, classes) from the last step, "tokens": (B, T, classes)}."""

    def __init__(self, vocab: int = 30, classes: int = 6, hidden: int = 24):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        h, _ = self.rnn(self.embed(tokens))
        per_token = self.head(h)
        return {"logits": per_token[:, -1], "tokens": per_token}


class Encoder(nn.Module):
    """(B, T) token ids -> (B, T, classes): a one-layer transformer encoder (LayerNorms inside)."""

    def __init__(self, vocab: int = 30, classes: int = 5, d: int = 16, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(
            d, nhead=2, dim_feedforward=32, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(tokens))))


# -- data -------------------------------------------------------------------------------------
def images(n: int = 384, classes: int = 7, size: int = 12, seed: int = 0):
    """(n, 1, size, size) images in [0, 1] labelled by a fixed linear map of a 4x4 pooling."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    w = torch.randn(16, classes, generator=g)
    pooled = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
    y = ((pooled - pooled.mean(0)) @ w).argmax(1)
    return x, y


def tokens(n: int = 384, length: int = 10, vocab: int = 30, classes: int = 6, seed: int = 0):
    """(n, T) token ids; per-token tags (token + 2 * left neighbour) % classes, and a sequence
    label: the tag of the last token."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, vocab, (n, length), generator=g)
    left = torch.cat([torch.zeros(n, 1, dtype=torch.long), t[:, :-1]], dim=1)
    tags = (t + 2 * left) % classes
    return t, tags


def loader(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0) -> Iterator:
    """Endless shuffled mini-batches (a private generator)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i : i + batch]
            yield x[idx], y[idx]


# -- judging ----------------------------------------------------------------------------------
def watch(model, optimizer, tmp_path, scaler=None) -> td.Doctor:
    doc = td.watch(model, optimizer, scaler=scaler, out_dir=tmp_path / "runs", console=False)
    doc.budget.adaptive = False  # the same samples on a busy CI machine as on an idle one
    return doc


def flagged(report) -> list:
    return [f for f in report.findings if f.severity in (Severity.ERROR, Severity.WARNING)]


def describe(findings) -> str:
    return "\n".join(f"{f.code} {f.severity.value} step={f.step}: {f.title}" for f in findings)


def assert_finds(report, code: str, severities=(Severity.ERROR, Severity.WARNING)):
    """The rule fired (at one of `severities`); returns its finding."""
    assert not report.internal_errors, report.internal_errors
    hits = [f for f in report.findings if f.code == code and f.severity in severities]
    assert hits, f"{code} did not fire:\n{describe(report.findings)}"
    return hits[0]


def assert_healthy(report) -> None:
    """No error and no warning at all (infos are fine), and no internal error."""
    assert not report.internal_errors, report.internal_errors
    bad = flagged(report)
    assert not bad, describe(bad)

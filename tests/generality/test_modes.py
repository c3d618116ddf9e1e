"""Generality of the mode-misuse rules (TD505, TD516): each bug planted on a model shape the
scenarios do not use (a transformer encoder over tokens, a CNN with BatchNorm2d, a frozen
transformer with dropout), beside its healthy twin, judged through td.watch / doc.log /
doc.close only."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.generality._shapes import (
    Encoder,
    SmallCNN,
    assert_finds,
    assert_healthy,
    images,
    loader,
    tokens,
    watch,
)
from traindoctor.findings import Severity


# -- TD505 memory-growth ----------------------------------------------------------------------
def _encoder_history(tmp_path, keep_graph: bool, steps=30):
    torch.manual_seed(0)
    t, tags = tokens(length=8, classes=5)
    model = Encoder(classes=5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, opt, tmp_path)
    data = loader(t, tags, 16)
    history = []  # for a smoothed loss in the progress bar
    for _ in range(steps):
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).transpose(1, 2), y)
        loss.backward()
        opt.step()
        history.append(loss if keep_graph else loss.detach())  # the bug keeps every graph
        doc.log(loss=loss)
    smoothed = torch.stack(history[-10:]).mean()
    assert torch.isfinite(smoothed)
    return doc.close()


def test_td505_losses_kept_in_a_list_with_their_graphs_on_a_transformer(tmp_path):
    f = assert_finds(_encoder_history(tmp_path, keep_graph=True), "TD505")
    assert f.evidence["graphs_alive"] >= 10
    assert_healthy(_encoder_history(tmp_path, keep_graph=False))


# -- TD516 frozen-module-in-train-mode --------------------------------------------------------
def _cnn_frozen_bn(tmp_path, backbone_eval: bool, steps=24):
    torch.manual_seed(0)
    x, y = images(classes=5)
    model = SmallCNN(5, bn=True)
    model.train()
    with torch.no_grad():  # "pretrained" running statistics, from brighter images
        for i in range(0, 192, 48):
            model.features(x[i : i + 48] * 1.5 + 0.3)
    model.features.requires_grad_(False)  # frozen: the head alone trains
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    doc = watch(model, opt, tmp_path)
    data = loader(x, y, 24)
    for _ in range(steps):
        model.train()
        if backbone_eval:
            model.features.eval()  # frozen on purpose: running statistics stay as loaded
        xb, yb = next(data)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    return doc.close()


def test_td516_frozen_cnn_backbone_with_batchnorm2d_in_train_mode(tmp_path):
    f = assert_finds(_cnn_frozen_bn(tmp_path, backbone_eval=False), "TD516")
    assert f.where.module == "features"
    assert_healthy(_cnn_frozen_bn(tmp_path, backbone_eval=True))


class FrozenEncoderClassifier(nn.Module):
    """A (frozen) transformer encoder with dropout, mean-pooled, and a trained linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder(classes=8, dropout=0.2)
        self.head = nn.Linear(8, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(t).mean(1))


def _frozen_encoder(tmp_path, encoder_eval: bool, steps=20):
    torch.manual_seed(0)
    t, tags = tokens(length=8, classes=3)
    model = FrozenEncoderClassifier()
    model.encoder.requires_grad_(False)
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    doc = watch(model, opt, tmp_path)
    data = loader(t, tags[:, -1], 16)
    for _ in range(steps):
        model.train()
        if encoder_eval:
            model.encoder.eval()
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    return doc.close()


def test_td516_frozen_transformer_encoder_with_dropout_on(tmp_path):
    # Dropout alone in a frozen encoder: said, as info (often on purpose, no harm measured).
    f = assert_finds(_frozen_encoder(tmp_path, encoder_eval=False), "TD516", (Severity.INFO,))
    assert f.where.module == "encoder"
    assert_healthy(_frozen_encoder(tmp_path, encoder_eval=True))

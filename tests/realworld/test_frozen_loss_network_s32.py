"""TD103 on a fixed loss network kept in eval mode, in no optimizer, without requires_grad_(False).

eriklindernoren/PyTorch-GAN's SRGAN computes its content loss on the features of a VGG-19
prefix (`FeatureExtractor`), calls `feature_extractor.eval()` and gives it to no optimizer,
but never turns its `requires_grad` off: backward computes (and accumulates) gradients for
the VGG every step. Before: TD103 error, "the optimizer was built from part of the model", a
false alarm (the training is right; only compute is wasted). Now: a note naming the model
kept in eval mode and `requires_grad_(False)` as the fix. Twin: the same loop whose loss
network is in train mode (nothing says it is fixed) keeps the error, and so does a head left
out of the optimizer of a single model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests._loop import watch


def _sr(tmp_path, loss_net_eval: bool, steps: int = 6):
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    feats = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    if loss_net_eval:
        feats.eval()
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    doc = watch({"generator": gen, "features": feats}, opt, tmp_path)
    x = torch.randn(16, 3, 12, 12)
    for i in range(steps):
        lo, hi = x[(i % 4) * 4 : (i % 4 + 1) * 4], x[(i % 4) * 4 : (i % 4 + 1) * 4] * 0.5
        opt.zero_grad()
        loss = F.l1_loss(feats(gen(lo)), feats(hi).detach())
        loss.backward()
        opt.step()
    doc.close()
    return doc


def test_loss_network_in_eval_mode_is_a_note(tmp_path):
    doc = _sr(tmp_path, loss_net_eval=True)
    f = next(f for f in doc.report.findings if f.code == "TD103")
    assert f.severity.value == "info"
    assert f.evidence["eval_mode_throughout"] == ["features"]
    assert "requires_grad_(False)" in f.fix


def test_loss_network_in_train_mode_stays_an_error(tmp_path):
    doc = _sr(tmp_path, loss_net_eval=False)
    f = next(f for f in doc.report.findings if f.code == "TD103")
    assert f.severity.value == "error"

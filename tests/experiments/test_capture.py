"""What the capture probe can replay: the loss called on the model's output itself, on a view
of it (`logits.view(-1, C)`), on a dtype cast (`model(x).float()`), or computed inside
forward() and returned with the labels passed in (never zeroed by the input-independent
baseline); a model left in eval mode is replayed in eval mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor import experiments


class Tagger(nn.Module):
    """(B, T, D) -> (B, T, C) logits; with `labels`, returns (loss, logits) as HF models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 5))

    def forward(self, x, labels=None):
        logits = self.net(x)
        if labels is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1)), logits


def run(tmp_path, how: str):
    torch.manual_seed(0)
    x = torch.randn(16, 4, 6)
    y = (x.sum(-1) > 0).long() + 2 * (x[..., 0] > 1).long()
    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if how == "eval":
        model.eval()
    with experiments.enable(), td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(4):
            opt.zero_grad()
            if how == "internal":
                loss, _ = model(x, y)
            elif how == "cast":
                loss = F.cross_entropy(model(x).float().view(-1, 5), y.view(-1))
            else:
                loss = F.cross_entropy(model(x).view(-1, 5), y.view(-1))
            loss.backward()
            opt.step()
    assert not doc.report.internal_errors
    return {e["name"]: e for e in doc.report.timeline.events("experiment")}


@pytest.mark.parametrize("how", ["view", "cast", "internal", "eval"])
def test_replayed(how, tmp_path):
    ran = run(tmp_path, how)
    assert set(ran) == {
        "init_loss",
        "overfit_one_batch",
        "lr_probe",
        "input_independent",
        "batch_independence",
    }
    assert ran["init_loss"]["verdict"] == "ok", ran["init_loss"]
    assert ran["init_loss"]["facts"]["classes"] == 5
    assert ran["overfit_one_batch"]["verdict"] == "ok", ran["overfit_one_batch"]
    # The labels passed to forward() are not zeroed: zeroed inputs cannot fit the batch.
    ii = ran["input_independent"]
    assert ii["verdict"] == "ok" and ii["facts"]["zeroed_loss"] > 5 * ii["facts"]["real_loss"], ii
    assert ran["batch_independence"]["verdict"] == "independent", ran["batch_independence"]

"""`td.watch(model)` without its optimizer, the loop's own torch optimizer stepping it: the
optimizer is adopted at its first step. Before, no step ever closed: "0 steps" and a TD105
error ("the weights were never updated") on a healthy run, and a real bug went unseen."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import traindoctor as td


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    return x, (x[:, :3].sum(1) > 0).long()


def _classifier(watch: bool, tmp_path, zero_grad: bool = True):
    x, y = _data()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = td.watch(model, out_dir=tmp_path, console=False) if watch else None
    for step in range(60):
        i = torch.arange(32) + (step * 32) % 224
        loss = F.cross_entropy(model(x[i]), y[i])
        if zero_grad:
            opt.zero_grad()
        loss.backward()
        opt.step()
    report = doc.close() if doc is not None else None
    return report, doc, [p.detach().clone() for p in model.parameters()]


def _loud(report):
    return [f.code for f in report.findings if f.severity.name in ("ERROR", "WARNING")]


def test_healthy_loop_is_stepped_and_silent(tmp_path):
    _, _, plain = _classifier(False, tmp_path)
    report, doc, watched = _classifier(True, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert doc.step - 1 == 60
    assert _loud(report) == []
    assert not report.to_dict().get("internal_errors")


def test_missing_zero_grad_is_caught(tmp_path):
    report, _, _ = _classifier(True, tmp_path, zero_grad=False)
    assert "TD106" in _loud(report)
    assert "TD105" not in _loud(report)


def test_gan_with_two_optimizers_adopts_both(tmp_path):
    x, _ = _data()
    torch.manual_seed(1)
    gen = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 10))
    disc = nn.Sequential(nn.Linear(10, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    opt_g = torch.optim.Adam(gen.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), 2e-4, betas=(0.5, 0.999))
    doc = td.watch({"G": gen, "D": disc}, out_dir=tmp_path, console=False)
    bce = nn.BCEWithLogitsLoss()
    for step in range(40):
        real = x[(torch.arange(32) + step * 32) % 256]
        fake = gen(torch.randn(32, 4))
        loss_d = bce(disc(real), torch.ones(32, 1)) + bce(disc(fake.detach()), torch.zeros(32, 1))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = bce(disc(fake), torch.ones(32, 1))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    report = doc.close()
    assert len(doc.optimizers) == 2
    assert doc.step - 1 == 40
    assert _loud(report) == []

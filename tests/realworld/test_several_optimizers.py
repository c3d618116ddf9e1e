"""Runs with several optimizers, as users write them, under the zero-code `traindoctor run`:
a GAN whose discriminator step was removed (its optimizer still zeroes the gradients) is
TD105 naming that optimizer and the line that built it; the healthy GAN, and layers trained
one after the other by their own optimizers (pytorch/examples mnist_forward_forward: the
first optimizer stops when its layer is done), are not."""

from __future__ import annotations

import pytest

from tests.cli.conftest import line_of, run_scripts

GAN = """
import torch
import torch.nn as nn

torch.manual_seed(0)
G = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
D = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
optG = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
optD = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))  # OPT_D
bce = nn.BCEWithLogitsLoss()
for it in range(150):
    real = torch.randn(64, 2) * 0.5 + 2.0
    fake = G(torch.randn(64, 4))
    optD.zero_grad()
    lossD = bce(D(real), torch.ones(64, 1)) + bce(D(fake.detach()), torch.zeros(64, 1))
    lossD.backward()
    STEP_D
    optG.zero_grad()
    lossG = bce(D(fake), torch.ones(64, 1))
    lossG.backward()
    optG.step()
print("done", lossD.item(), lossG.item())
"""

LAYERWISE = """
import torch
import torch.nn as nn

torch.manual_seed(0)
layers = [nn.Linear(16, 32), nn.Linear(32, 32)]
opts = [torch.optim.Adam(layer.parameters(), lr=1e-2) for layer in layers]
x = torch.randn(256, 16)
h = x
for layer, opt in zip(layers, opts):
    for i in range(60):
        out = torch.relu(layer(h))
        loss = (out.pow(2).mean(1) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    h = torch.relu(layer(h)).detach()
print("done")
"""

SCRIPTS = {
    "gan_no_d_step": GAN.replace("STEP_D", "pass  # optD.step() removed"),
    "gan_ok": GAN.replace("STEP_D", "optD.step()"),
    "layerwise": LAYERWISE,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, SCRIPTS)


def test_an_optimizer_whose_step_was_removed_is_named(runs):
    r = runs["gan_no_d_step"]
    assert r.rc == 0, r
    f = r.finding("TD105")
    assert f["severity"] == "error", f
    assert f["where"]["source"] == f"train.py:{line_of(r.cwd / 'train.py', '# OPT_D')}", f
    assert f["evidence"]["steps"] == 0, f
    assert all(p.startswith("Sequential2.") for p in f["where"]["params"]), f


@pytest.mark.parametrize("name", ["gan_ok", "layerwise"])
def test_optimizers_that_step_are_not_td105(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    loud = [f for f in r.findings()["findings"] if f["severity"] != "info"]
    assert loud == [], loud

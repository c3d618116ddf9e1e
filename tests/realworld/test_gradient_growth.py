"""Gradients that grow by orders of magnitude while a deep net leaves the plateau of its init,
next to a real blow-up at the end of a run, written as standalone programs and run unchanged
under the zero-code `traindoctor run`.

Healthy, and no TD206 (exploding-gradient) at warning or error:
- 8 ReLU layers of 64 units, AdamW lr=1e-3, cross-entropy on one fixed batch, 40 steps: the
  first layer's gradient norm is ~0.0012 at steps 1-10, ~0.01 at step 20 and ~0.2 at step 40,
  the last, while the loss falls 2.32 -> 1.67. TD206 was an ERROR here (the jump is at the last
  sampled step, so no loss after it was measured and "it stayed up" was taken from one sample).
- 10 ReLU layers of 48 units, Adam lr=1e-3, a smooth regression target, 40 steps (the same
  escape, another loss and width).

A true explosion, still an error: a 2-layer regression MLP whose SGD learning rate a schedule bug
raises 50x at step 30; the gradient grows geometrically and the loss climbs to ~1e5 by the last
step, the only one sampled after the jump.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import loud, run_scripts
from tests.rules._loss_inputs_tl import SUPERVISED_CE
from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, make_timeline

DEEP_MLP_FIXED_BATCH = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
blocks = []
for _ in range(8):
    blocks += [nn.Linear(64, 64), nn.ReLU()]
net = nn.Sequential(*blocks, nn.Linear(64, 10))
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
inputs, labels = torch.randn(32, 64), torch.randint(0, 10, (32,))
for step in range(40):
    optimizer.zero_grad()
    loss = F.cross_entropy(net(inputs), labels)
    loss.backward()
    optimizer.step()
print("final loss", loss.item())
"""

DEEP_MLP_REGRESSION = """
import torch
import torch.nn as nn

torch.manual_seed(1)
layers = []
width = 48
for i in range(10):
    layers += [nn.Linear(16 if i == 0 else width, width), nn.ReLU()]
model = nn.Sequential(*layers, nn.Linear(width, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(64, 16)
y = x[:, :4].sum(1, keepdim=True).sin()
for it in range(40):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
print("final loss", loss.item())
"""

LR_RAISED_AT_THE_END = """
import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(128, 8)
y = x[:, :1] * 2.0 - x[:, 1:2]
for step in range(40):
    if step == 30:
        for group in opt.param_groups:
            group["lr"] = 0.5
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
print("final loss", loss.item())
"""

SCRIPTS = {
    "deep_mlp_fixed_batch": DEEP_MLP_FIXED_BATCH,
    "deep_mlp_regression": DEEP_MLP_REGRESSION,
    "lr_raised_at_the_end": LR_RAISED_AT_THE_END,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, SCRIPTS)


@pytest.mark.parametrize("name", ["deep_mlp_fixed_batch", "deep_mlp_regression"])
def test_a_deep_net_leaving_its_plateau_is_no_explosion(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    assert "TD206" not in loud(r), r.findings()["findings"]


def test_a_blow_up_in_the_last_steps_is_still_an_error(runs):
    r = runs["lr_raised_at_the_end"]
    assert r.rc == 0, r
    f = r.finding("TD206")
    assert f["severity"] == "error", f
    assert f["step"] > 30, f


# -- the same cases on hand-built timelines ------------------------------------------------

PARAMS = ["enc.weight", "head.weight"]


def _tl(head_norms, losses, last=None):
    """Gradient norms sampled at the keys of `head_norms`, a training loss at every step up to
    `last` (default: the last sampled step)."""
    steps = {}
    for step, v in head_norms.items():
        steps[step] = {
            "grads.norm": {"enc.weight": 0.5, "head.weight": v},
            "optim.lr": {"opt0/group0": 1e-3},
        }
    for step in range(1, (last or max(head_norms)) + 1):
        row = steps.setdefault(step, {})
        row["loss.train"] = [losses(step)]
        row["loss_inputs.observed"] = [0]
    return make_timeline(params=PARAMS, steps=steps, events=[SUPERVISED_CE])


GROWTH = {1: 0.6, 2: 0.62, 3: 0.65, 10: 0.7, 20: 1.5, 40: 30.0}


def test_a_jump_at_the_last_sample_the_loss_falls_through_is_info():
    f = assert_fires("TD206", _tl(GROWTH, lambda s: 2.3 * 0.99**s))
    assert f.severity is Severity.INFO and f.step == 40
    assert f.evidence["loss_through_rise"]["trend"] == "fell"
    assert f.evidence["loss_measured_after"] is False
    assert "kept falling while it rose" in f.cause


def test_a_jump_at_the_last_sample_the_loss_rises_with_is_an_error():
    f = assert_fires("TD206", _tl(GROWTH, lambda s: 2.0 if s < 35 else 2.0 * 3 ** (s - 34)))
    assert f.severity is Severity.ERROR
    assert f.evidence["loss_through_rise"]["trend"] == "rose"
    assert "rose with it" in f.cause


def test_a_jump_at_the_last_sample_on_a_flat_loss_is_a_warning():
    # one sample of the norm, and the loss neither fell nor rose: not judged as an error
    f = assert_fires("TD206", _tl(GROWTH, lambda s: 2.0))
    assert f.severity is Severity.WARNING
    assert "run ended before its effect on the loss could be measured" in f.cause


def test_a_last_sample_jump_with_losses_after_it_is_judged_on_them():
    # gradients sampled up to step 40, losses to step 48: the loss after says it all
    rising = _tl(GROWTH, lambda s: 2.0 if s <= 40 else 4.0, last=48)
    assert assert_fires("TD206", rising).severity is Severity.ERROR
    falling = _tl(GROWTH, lambda s: 2.0 if s <= 40 else 1.0, last=48)
    assert assert_fires("TD206", falling).severity is Severity.INFO

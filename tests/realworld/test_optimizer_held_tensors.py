"""Tensors trained outside any module by an optimizer of their own, as users write them, under
the zero-code `traindoctor run`: SAC's entropy temperature (cleanrl: `log_alpha =
torch.zeros(1, requires_grad=True)` with its own Adam, its loss built from no_grad log-probs)
reaches only that tensor and is not a loss without graph (TD101); a training loss re-wrapped
from `.item()` next to it still is."""

from __future__ import annotations

import pytest

from tests.cli.conftest import loud, run_scripts

SAC_TEMPERATURE = """
import torch
import torch.nn as nn

torch.manual_seed(0)
actor = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 2))
critic = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))
actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
log_alpha = torch.zeros(1, requires_grad=True)
alpha_opt = torch.optim.Adam([log_alpha], lr=1e-3)
target_entropy = -1.0
for it in range(30):
    obs = torch.randn(64, 3)
    act = torch.randn(64, 1)
    q = critic(torch.cat([obs, act], 1))
    critic_loss = CRITIC_LOSS
    critic_opt.zero_grad()
    critic_loss.backward()
    critic_opt.step()
    mean, log_std = actor(obs).chunk(2, 1)
    dist = torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp())
    pi = dist.rsample()
    log_pi = dist.log_prob(pi)
    actor_loss = (log_alpha.exp().detach() * log_pi - critic(torch.cat([obs, pi], 1))).mean()
    actor_opt.zero_grad()
    actor_loss.backward()
    actor_opt.step()
    alpha_loss = (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()
    alpha_opt.zero_grad()
    alpha_loss.backward()
    alpha_opt.step()
print("done", log_alpha.item())
"""

SCRIPTS = {
    "sac_ok": SAC_TEMPERATURE.replace(
        "CRITIC_LOSS", "(q - obs.sum(1, keepdim=True)).pow(2).mean()"
    ),
    "sac_critic_rewrapped": SAC_TEMPERATURE.replace(
        "CRITIC_LOSS",
        "torch.tensor((q - obs.sum(1, keepdim=True)).pow(2).mean().item(), requires_grad=True)",
    ),
}


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, SCRIPTS)


def test_a_temperature_loss_on_an_optimizer_held_tensor_is_not_td101(runs):
    r = runs["sac_ok"]
    assert r.rc == 0, r
    assert "TD101" not in r.codes(), r.codes()
    assert loud(r) == [], loud(r)


def test_a_rewrapped_loss_beside_it_is_still_td101(runs):
    r = runs["sac_critic_rewrapped"]
    assert r.rc == 0, r
    assert r.finding("TD101")["severity"] == "error"

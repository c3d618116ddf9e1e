"""A segmentation loss as users write it (milesial/Pytorch-UNet's `utils/dice_score.py`):
cross-entropy plus 1 - Dice, the Dice smoothed by an epsilon and its denominator summing the
prediction and the (constant) target. Those adds have a None input in the graph, like a
detached term's, but sit inside a quotient: no TD302. The same Dice computed from detached
probabilities and added to the loss is still a detached term."""

from __future__ import annotations

import pytest

from tests.cli.conftest import loud, run_scripts

DICE = """
import torch
import torch.nn.functional as F

torch.manual_seed(0)


def dice_coeff(input, target, epsilon=1e-6):
    inter = 2 * (input * target).sum()
    sets_sum = input.sum() + target.sum()
    sets_sum = torch.where(sets_sum == 0, inter, sets_sum)
    return (inter + epsilon) / (sets_sum + epsilon)


net = torch.nn.Sequential(
    torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)
)
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x = torch.randn(64, 1, 16, 16)
y = (x > 0.3).long()[:, 0]
for step in range(40):
    i = (step * 8) % 64
    xb, yb = x[i : i + 8], y[i : i + 8]
    logits = net(xb)
    probs = F.softmax(logits, dim=1).float()
    onehot = F.one_hot(yb, 2).permute(0, 3, 1, 2).float()
    loss = F.cross_entropy(logits, yb) + 1 - dice_coeff(PROBS[:, 1], onehot[:, 1])
    opt.zero_grad()
    loss.backward()
    opt.step()
print("done", loss.item())
"""

SCRIPTS = {
    "dice_ok": DICE.replace("PROBS", "probs"),
    "dice_detached": DICE.replace("PROBS", "probs.detach()"),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, SCRIPTS)


def test_dice_epsilon_and_target_sums_are_not_detached_terms(runs):
    r = runs["dice_ok"]
    assert r.rc == 0, r
    assert loud(r) == [], loud(r)


def test_a_dice_of_detached_probabilities_is_still_td302(runs):
    r = runs["dice_detached"]
    assert r.rc == 0, r
    f = r.finding("TD302")
    assert f["severity"] == "error" and "detach" in f["title"], f

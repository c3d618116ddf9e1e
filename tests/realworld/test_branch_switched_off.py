"""A layer a config switches off, as PatrickHua/SimSiam's projector does (built with three
layers, `proj_layers: 2` skips `self.layer2` under an `if`): its params are in the optimizer
and never get a gradient. The forward mentions it, the rest of the model trains: TD102 says it
at info. A layer defined and never mentioned in forward (forgotten), or a ModuleList member an
index skips, is still a TD102 error."""

from __future__ import annotations

import pytest

from tests.cli.conftest import loud, run_scripts

PROJECTOR = """
import torch
import torch.nn as nn

torch.manual_seed(0)


class Projector(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.layer3 = nn.Linear(32, 4)
        self.num_layers = 2

    def forward(self, x):
        x = self.layer1(x)
        if self.num_layers == 3:
            x = self.layer2(x)
        return self.layer3(x)


class Forgetful(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.layer3 = nn.Linear(32, 4)

    def forward(self, x):
        return self.layer3(self.layer1(x))


class OffByOne(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(4))
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        for i in range(len(self.blocks) - 1):  # BUG: the last block never runs
            x = torch.relu(self.blocks[i](x))
        return self.out(x)


net = MODEL()
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
x = torch.randn(256, 16)
y = (x[:, :4].argmax(1))
for step in range(30):
    i = (step * 32) % 256
    loss = nn.functional.cross_entropy(net(x[i : i + 32]), y[i : i + 32])
    opt.zero_grad()
    loss.backward()
    opt.step()
print("done", loss.item())
"""

SCRIPTS = {
    "switched_off": PROJECTOR.replace("MODEL", "Projector"),
    "forgotten": PROJECTOR.replace("MODEL", "Forgetful"),
    "off_by_one": PROJECTOR.replace("MODEL", "OffByOne"),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, SCRIPTS)


def test_layer_switched_off_by_a_branch_is_info(runs):
    r = runs["switched_off"]
    assert r.rc == 0, r
    assert loud(r) == [], loud(r)
    f = r.finding("TD102")
    assert f["severity"] == "info" and f["where"]["module"] == "layer2", f


def test_layer_never_mentioned_is_still_an_error(runs):
    r = runs["forgotten"]
    assert r.rc == 0, r
    f = r.finding("TD102")
    assert f["severity"] == "error" and f["where"]["module"] == "layer2", f


def test_a_list_member_skipped_by_an_index_is_still_an_error(runs):
    """`self.blocks` is mentioned in forward, but its other members ran: an index that misses
    one (review of a3ca542), not a branch switched off."""
    r = runs["off_by_one"]
    assert r.rc == 0, r
    f = r.finding("TD102")
    assert f["severity"] == "error" and f["where"]["module"] == "blocks.3", f

"""Healthy programs of styles nobody here wrote before (session 31; the full set, 28 programs,
is in corpus/healthy_styles/s31/, with session 29's 39 in corpus/healthy_styles/s29/).

A multiply by a constant whose zeros the op that made its other operand fills in again blocks
nothing: CutMix's soft-target cross-entropy `-(t * F.log_softmax(z, 1)).sum(1)` zeroes the
gradient of `log_softmax`'s output where the mixed target is 0, but the softmax's
normalisation gives every logit a gradient, and `nn.PoissonNLLLoss` computes `exp(x) - y * x`,
whose `y * x` is 0 wherever a count is 0 while `exp(x)` still reaches every x. Both were false
TD301 errors ("`mul` blocks 63% of the loss gradient"). A loss weight of 0 on most outputs of
a regression still blocks them (TD301).

A full-batch Poisson GLM fitted by Adam converges: its loss repeats to the bit for 20 steps,
with batch fingerprints (sampled) only before that window. One batch for the whole run and a
gradient that is not 0 is convergence, not a loss that ignores its batch (no TD107).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from tests.cli.conftest import reported_batch
from traindoctor.gradpath import BLOCKS, REFILLED
from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts


def _mul(loss):
    (n,) = [n for n in td.explain_gradients(loss).find("mul") if n.zeroed]
    return n


def test_walk_soft_targets_times_log_softmax_are_refilled():
    torch.manual_seed(0)
    f = nn.Linear(16, 5)
    x = torch.randn(8, 16)
    t = torch.zeros(8, 5)
    t[:, 0], t[:, 2] = 0.7, 0.3  # CutMix: two classes mixed, three at 0
    n = _mul(-(t * F.log_softmax(f(x), 1)).sum(1).mean())
    assert n.verdict == REFILLED and n.refilled and n.zeroed == pytest.approx(0.6)
    onehot = F.one_hot(torch.arange(8) % 5, 5).float()  # the same loss on hard targets
    assert _mul(-(onehot * F.log_softmax(f(x), 1)).sum(1).mean()).verdict == REFILLED


def test_walk_poisson_nll_counts_times_log_rate_are_refilled():
    torch.manual_seed(0)
    glm = nn.Linear(4, 1)
    y = torch.tensor([0.0, 0.0, 3.0, 0.0, 1.0, 0.0, 0.0, 2.0])
    n = _mul(nn.PoissonNLLLoss(log_input=True)(glm(torch.randn(8, 4))[:, 0] + 0.1, y))
    assert n.verdict == REFILLED


def test_walk_a_zero_loss_weight_on_outputs_still_blocks():
    torch.manual_seed(0)
    f = nn.Linear(16, 4)
    w = torch.tensor([0.0, 0.0, 0.0, 2.0])  # three of four outputs weighted 0: they never learn
    n = _mul(((f(torch.randn(8, 16)) - torch.randn(8, 4)) ** 2 * w).mean())
    assert n.verdict == BLOCKS and not n.refilled


PARAMS = ["fc.weight", "fc.bias"]
FP = {"in0.sum": 3.5, "in0.sumsq": 9.0, "in0.wsum": 1.25, "in0.min": -1.0, "in0.max": 2.0}


def _converged(fingerprinted, other_after=None):
    """Loss falling for 20 steps, then bit-identical for 10, a gradient that is not 0; the
    batch fingerprinted only at the given steps (before the constant window)."""
    values = [2.0 - 0.05 * i for i in range(20)] + [0.95] * 10
    steps = {
        i: {"loss.train": [v], "grads.norm": dict.fromkeys(PARAMS, 1e-6), "optim.step": 1}
        for i, v in enumerate(values, 1)
    }
    tl = make_timeline(params=PARAMS, steps=steps)
    for s in fingerprinted:
        tl.record(s, "data.fp", dict(FP))
    if other_after:
        tl.record(other_after, "data.fp", {**FP, "in0.sum": 4.0})
    return tl


def test_td107_one_batch_fingerprinted_before_the_window_is_convergence():
    assert_silent("TD107", _converged([1, 2, 3, 10, 11]))
    # a fingerprint after the window shows another batch: the constant loss is reported
    assert_fires("TD107", _converged([1, 2, 3, 10, 11], other_after=30))
    # batches that changed before the window: not one batch for the run
    tl = _converged([1, 2, 3, 10])
    tl.record(11, "data.fp", {**FP, "in0.sum": 4.0})
    assert_fires("TD107", tl)


CUTMIX = """
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
K = 5
protos = torch.randn(K, 32)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, K))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for step in range(60):
    y = torch.randint(0, K, (64,))
    x = protos[y] + torch.randn(64, 32)
    t = F.one_hot(y, K).float()
    if step % 2:  # CutMix-style: part of another sample pasted in, the target mixed by area
        perm = torch.randperm(64)
        x = torch.cat([x[:, :20], x[perm, 20:]], 1)
        t = 0.625 * t + 0.375 * t[perm]
    loss = -(t * F.log_softmax(model(x), 1)).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

POISSON_GLM = """
import torch, torch.nn as nn
torch.manual_seed(0)
X = torch.randn(3000, 6)
exposure = torch.rand(3000) * 0.9 + 0.1
y = torch.poisson(exposure * torch.exp(X @ torch.tensor([0.5, -0.3, 0.2, 0.0, 0.8, -0.6]) - 1.0))
glm = nn.Linear(6, 1)
loss_fn = nn.PoissonNLLLoss(log_input=True)
opt = torch.optim.Adam(glm.parameters(), lr=0.05)
for it in range(300):
    loss = loss_fn(glm(X)[:, 0] + exposure.log(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

ZERO_WEIGHT = """
import torch, torch.nn as nn
torch.manual_seed(0)
W = torch.randn(16, 4)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
w = torch.tensor([0.0, 0.0, 0.0, 2.0])  # meant: per-output weights; three left at 0
for step in range(60):
    x = torch.randn(64, 16)
    loss = ((model(x) - x @ W) ** 2 * w).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

runs, test_fixed_twins_are_silent = reported_batch(
    {"zero_loss_weight": ZERO_WEIGHT}, {"cutmix_soft_targets": CUTMIX, "poisson_glm": POISSON_GLM}
)
test_fixed_twins_are_silent = pytest.mark.slow(test_fixed_twins_are_silent)


@pytest.mark.slow
def test_a_loss_weight_left_at_zero_still_blocks(runs):
    r = runs["zero_loss_weight"]
    assert r.rc == 0, r
    f = r.finding("TD301")
    assert f["severity"] == "error" and f["where"]["op"] == "mul", f


def _td514_configured(cls, decoupled):
    params = ["fc.weight", "fc.bias", "bn.weight", "bn.bias"]
    opt = optimizer_facts(params, lr=1e-3, cls=cls)
    opt["groups"][0]["weight_decay"] = 1e-6
    hp = {"opt0/group0": {"momentum": 0.0, "dampening": 0.0, "decoupled": decoupled}}
    return make_timeline(
        params=params,
        optimizers=[opt],
        steps={1: {"params.norm": {"fc.weight": 4.0, "bn.weight": 2.0}}},
        facts={"module_types": {"<model>": "Net", "fc": "Linear", "bn": "BatchNorm1d"}},
        events=[{"kind": "optimizer_hparams", "step": 1, "groups": hp}],
        ended=True,
    )


def test_td514_info_states_no_lr_wd_factor_for_adams_coupled_decay():
    """Barlow Twins' Adam(weight_decay=1e-6) was told 'halve them in 693,147,181 steps': with
    coupled L2 decay the pull goes through Adam's normalisation, not (1 - lr·wd)."""
    f = assert_fires("TD514", _td514_configured("Adam", decoupled=False))
    assert "normalisation" in f.cause and "halve" not in f.cause
    assert f.evidence["half_life_steps"] is None
    f = assert_fires("TD514", _td514_configured("AdamW", decoupled=True))
    assert "(1 - lr·wd)" in f.cause and "halve them in" in f.cause

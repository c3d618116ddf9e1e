"""Session 32 (H5): findings left for a decision by session 31's review.

TD403 on gradient-free forwards that are not a validation: a PPO behaviour policy (a copy of
the trained policy, Dropout in train mode) acting in an environment, and a GAN's EMA generator
(BatchNorm in train mode) sampled for images. What was measured is true (gradient-free forwards
with BatchNorm/Dropout active) but "validation"/"evaluated" was a claim nothing in the run
showed. TD403 now says "validation" only where the run shows one (inside doc.validating(), the
model put in eval mode elsewhere in the run, a loss computed with gradients off in that step)
and describes the forwards as measured otherwise; an unwatched copy run so is info.

TD209 on logits that are cosines times a constant (below): by design, not judged.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical

import traindoctor as td
from traindoctor.findings import Severity
from traindoctor.probes._scaled_cosine import scaled_cosine


def _td403(doc):
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    return [f for f in report.findings if f.code == "TD403"]


# -- PPO: the behaviour policy (policy_old) acts in an environment in train mode ------------------
class ActorCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Dropout(0.1))
        self.pi = nn.Linear(32, 2)
        self.v = nn.Linear(32, 1)

    def forward(self, s):
        h = self.body(s)
        return self.pi(h), self.v(h).squeeze(-1)


def ppo(tmp_path, validate=False):
    torch.manual_seed(0)
    policy, policy_old = ActorCritic(), ActorCritic()
    policy_old.load_state_dict(policy.state_dict())  # PPO-PyTorch's behaviour policy
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    doc = td.watch(policy, opt, out_dir=tmp_path, console=False)
    for _ in range(4):
        states, actions, logps, rewards = [], [], [], []
        with torch.no_grad():  # acting: 16 steps of 8 environments
            for _ in range(16):
                s = torch.randn(8, 4)
                dist = Categorical(logits=policy_old(s)[0])
                a = dist.sample()
                states.append(s)
                actions.append(a)
                logps.append(dist.log_prob(a))
                rewards.append((a == (s[:, 0] > 0).long()).float())
        s, a, old_logp, r = (torch.cat(t) for t in (states, actions, logps, rewards))
        with torch.no_grad():
            adv = r - policy(s)[1]  # the critic's baseline: one gradient-free forward
        for _ in range(2):
            logits, v = policy(s)
            ratio = (Categorical(logits=logits).log_prob(a) - old_logp).exp()
            surr = torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
            loss = -surr.mean() + 0.5 * ((v - r) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        policy_old.load_state_dict(policy.state_dict())
        if validate:  # an evaluation of the behaviour policy with a loss, gradients off
            with torch.no_grad():
                xv = torch.randn(64, 4)
                F.cross_entropy(policy_old(xv)[0], (xv[:, 0] > 0).long())
                F.cross_entropy(policy_old(xv)[0], (xv[:, 0] > 0).long())
    return doc


def test_ppo_behaviour_policy_acting_is_not_called_a_validation(tmp_path):
    found = _td403(ppo(tmp_path))
    assert len(found) == 1, found
    f = found[0]
    assert f.severity is Severity.INFO, f
    assert "ran gradient-free forwards with 1 BatchNorm/Dropout module(s)" in f.title, f.title
    assert "evaluated" not in f.title and "validation" not in f.title.lower()
    assert "does not show which" in f.cause
    assert f.evidence["evaluation_shown_by"] is None


def test_ppo_behaviour_policy_evaluated_with_a_loss_is_still_a_warning(tmp_path):
    found = _td403(ppo(tmp_path, validate=True))
    assert len(found) == 1, found
    f = found[0]
    assert f.severity is Severity.WARNING, f
    assert "was evaluated with" in f.title
    assert f.evidence["evaluation_shown_by"].startswith("a loss is computed with gradients off")


# -- a GAN whose EMA generator is sampled for images in train mode -------------------------------
def gan_with_ema(tmp_path):
    torch.manual_seed(1)
    g = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))
    d = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    g_ema = copy.deepcopy(g).requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), 2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-3, betas=(0.5, 0.999))
    doc = td.watch({"G": g, "D": d}, [opt_d, opt_g], out_dir=tmp_path, console=False)
    ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)
    for step in range(20):
        real = torch.randn(64, 2) * 0.5 + torch.tensor([2.0, -1.0])
        fake = g(torch.randn(64, 8))
        loss_d = F.binary_cross_entropy_with_logits(
            d(real), ones
        ) + F.binary_cross_entropy_with_logits(d(fake.detach()), zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(d(fake), ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            for pe, pg in zip(g_ema.parameters(), g.parameters()):
                pe.lerp_(pg, 0.1)
        if (step + 1) % 5 == 0:
            with torch.no_grad():  # samples for a figure, 4 batches
                [g_ema(torch.randn(16, 8)) for _ in range(4)]
                g(torch.randn(16, 8))  # and the live generator, whose scan finds the copy
    return doc


def test_gan_ema_generator_sampled_is_not_called_an_evaluation(tmp_path):
    found = [f for f in _td403(gan_with_ema(tmp_path)) if f.evidence.get("copy_of")]
    assert len(found) == 1, found
    f = found[0]
    assert f.severity is Severity.INFO, f
    assert "an unwatched copy of `G`, ran gradient-free forwards" in f.title, f.title


# -- TD209 on scaled cosine logits ---------------------------------------------------------------
# A cosine classifier's logits are s times cosines (NormFace, CosFace, ArcFace, `s * relu(cos)`):
# bounded by s whatever the weights, unchanged by their scale. On 3-d embeddings of 5 classes,
# s = 16, the cross-entropy at init was 4.4 (relu), 12.4 (CosFace), 12.8 (ArcFace) against
# ln 5 = 1.61, and TD209 warned "loss at init ... final layer `head` multiplies its input's std
# by 35-60": no init changes either (the head normalizes its input and its weights).
class CosineHead(nn.Module):
    def __init__(self, kind: str, d: int = 3, classes: int = 5, s: float = 16.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d))
        self.kind, self.s = kind, s

    def forward(self, z, y):
        if self.kind == "unnormalized":  # the same head without F.normalize: init matters
            return self.s * F.linear(z, self.weight)
        cos = F.linear(F.normalize(z), F.normalize(self.weight))
        if self.kind == "relu":
            return self.s * F.relu(cos)
        if self.kind == "cosface":
            return self.s * (cos - 0.35 * F.one_hot(y, cos.size(1)))
        c = cos.clamp(-1 + 1e-7, 1 - 1e-7)  # arcface
        target = torch.cos(torch.acos(c) + 0.5)
        return self.s * torch.where(F.one_hot(y, c.size(1)).bool(), target, c)


def cosine_classifier(tmp_path, kind):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3), nn.ReLU())
    head = CosineHead(kind)
    model = nn.ModuleDict({"body": body, "head": head})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    w = torch.randn(10, 5)
    for _ in range(8):
        x = torch.randn(64, 10)
        y = (x @ w).argmax(1)
        loss = F.cross_entropy(head(body(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    return [f for f in report.findings if f.code == "TD209"]


@pytest.mark.parametrize("kind", ["relu", "cosface", "arcface"])
def test_scaled_cosine_logits_are_not_poor_initialization(tmp_path, kind):
    assert not cosine_classifier(tmp_path, kind)


def test_the_same_head_unnormalized_is_still_judged(tmp_path):
    found = cosine_classifier(tmp_path, "unnormalized")
    assert len(found) == 1 and found[0].severity is Severity.WARNING, found


def test_scaled_cosine_is_told_on_the_graph():
    torch.manual_seed(0)
    z = torch.randn(8, 3, requires_grad=True)
    w = nn.Parameter(torch.randn(5, 3))
    y = torch.randint(0, 5, (8,))
    cos = F.linear(F.normalize(z), F.normalize(w))
    oh = F.one_hot(y, 5).float()
    sine = torch.sqrt((1.0 - torch.pow(cos, 2)).clamp(0, 1))
    insightface = 30 * (oh * (cos * 0.87 - sine * 0.48) + (1.0 - oh) * cos)
    for logits, s in [
        (16 * F.relu(cos), 16.0),
        (insightface, 30.0),
        (cos / 0.07, 1 / 0.07),
        (10 * F.cosine_similarity(z[:, None, :], w[None], dim=-1), 10.0),
    ]:
        found = scaled_cosine(logits)
        assert found is not None and abs(found[0] - s) < 1e-4, (logits.grad_fn, found)
        assert any(v is w for v in found[1])
    t = nn.Parameter(torch.tensor(2.6))
    for logits in [
        16 * F.linear(z, w),  # no normalization
        16 * (F.normalize(z) @ w.t()),  # one operand normalized
        16 * F.linear(F.normalize(z), F.normalize(w), torch.zeros(5, requires_grad=True)),
        cos * t.exp(),  # a learned temperature: TD209's own case
        cos / t,
    ]:
        assert scaled_cosine(logits) is None, logits.grad_fn

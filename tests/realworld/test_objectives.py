"""Objectives that are not meant to fall, and the two faults TD108/TD210 exist for, written as
standalone programs the way their tutorials write them and run unchanged under the zero-code
`traindoctor run`.

Healthy, and silent at warning/error for TD108 and TD210: REINFORCE on a hand-written balancing
task (the episode-summed loss grows with the episodes as the policy learns), DQN with a replay
buffer and a target network on a chain MDP (the TD targets climb as the Q-values grow), a GAN on
a ring of 2-D Gaussians (two optimizers, G and D trained against each other), DDPM-style noise
prediction on 2-D points (a noisy loss), SimCLR-style InfoNCE (each sample its own class).

Faults, still caught: a char-level GRU language model with Adam at lr=3.0 (1000x a working lr)
behind clip_grad_norm_(1.0) -- no NaN, every step clipped, the loss stays far above its start --
and a supervised MLP with SGD lr=1e-7 (TD108, updates tiny).
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import line_of, run_all, td, write

REINFORCE = """
# REINFORCE on a hand-written balancing task: +1 per step while the pole stays up.
import torch
import torch.nn as nn
from torch.distributions import Categorical

torch.manual_seed(0)
g = torch.Generator().manual_seed(1)


def run_episode(policy, max_t=200):
    x, v, log_probs, rewards = 0.0, 0.0, [], []
    for t in range(max_t):
        dist = Categorical(logits=policy(torch.tensor([x, v])))
        a = dist.sample()
        log_probs.append(dist.log_prob(a))
        push = 1.0 if a.item() == 1 else -1.0
        v += 0.05 * push + 0.03 * x + 0.01 * torch.randn(1, generator=g).item()
        x += v
        rewards.append(1.0)
        if abs(x) > 1.0:
            break
    return log_probs, rewards


policy = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))
optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
for episode in range(100):
    log_probs, rewards = run_episode(policy)
    R, returns = 0.0, []
    for r in reversed(rewards):
        R = r + 0.99 * R
        returns.insert(0, R)
    loss = -(torch.stack(log_probs) * torch.tensor(returns)).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

DQN = """
# DQN with a replay buffer and a target network on a hand-written chain MDP.
import random
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
random.seed(0)
N = 6


def one_hot(s):
    x = torch.zeros(N)
    x[s] = 1.0
    return x


def env_step(s, a):
    s2 = min(N - 1, s + 1) if a == 1 else max(0, s - 1)
    r = 1.0 if s2 == N - 1 else 0.0
    return s2, r, s2 == N - 1


q_net = nn.Sequential(nn.Linear(N, 64), nn.ReLU(), nn.Linear(64, 2))
target_net = nn.Sequential(nn.Linear(N, 64), nn.ReLU(), nn.Linear(64, 2))
target_net.load_state_dict(q_net.state_dict())
opt = torch.optim.Adam(q_net.parameters(), lr=1e-3)
buffer, s, eps = [], 0, 1.0
for t in range(1500):
    if random.random() < eps:
        a = random.randrange(2)
    else:
        with torch.no_grad():
            a = int(q_net(one_hot(s)).argmax())
    s2, r, done = env_step(s, a)
    buffer.append((s, a, r, s2, done))
    s = 0 if done else s2
    eps = max(0.05, eps - 1 / 800)
    if t >= 100 and t % 4 == 0:
        batch = random.sample(buffer, 32)
        obs = torch.stack([one_hot(b[0]) for b in batch])
        act = torch.tensor([b[1] for b in batch])
        rew = torch.tensor([b[2] for b in batch])
        nxt = torch.stack([one_hot(b[3]) for b in batch])
        dn = torch.tensor([float(b[4]) for b in batch])
        with torch.no_grad():
            target = rew + 0.95 * target_net(nxt).max(1).values * (1 - dn)
        q = q_net(obs).gather(1, act[:, None]).squeeze(1)
        loss = F.smooth_l1_loss(q, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if t % 100 == 0:
        target_net.load_state_dict(q_net.state_dict())
"""

GAN = """
# A GAN on a ring of 8 Gaussians: G and D trained against each other.
import math
import torch
import torch.nn as nn

torch.manual_seed(0)


def real_batch(n=64):
    k = torch.randint(0, 8, (n,))
    ang = k.float() * (2 * math.pi / 8)
    centers = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * 2.0
    return centers + 0.05 * torch.randn(n, 2)


G = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
D = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2),
                  nn.Linear(64, 1))
opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
bce = nn.BCEWithLogitsLoss()
for it in range(300):
    real = real_batch()
    fake = G(torch.randn(64, 8))
    d_loss = bce(D(real), torch.ones(64, 1)) + bce(D(fake.detach()), torch.zeros(64, 1))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss = bce(D(fake), torch.ones(64, 1))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
"""

DDPM = """
# DDPM-style noise prediction on 2-D points (tiny MLP denoiser, 100 diffusion steps).
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
T = 100
betas = torch.linspace(1e-4, 0.02, T)
alpha_bar = torch.cumprod(1 - betas, 0)
data = torch.randn(2048, 2) * torch.tensor([1.0, 0.3]) + torch.tensor([0.5, -0.5])


class Denoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                                 nn.Linear(128, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None].float() / T], 1))


model = Denoiser()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(200):
    x0 = data[torch.randint(0, len(data), (32,))]
    t = torch.randint(0, T, (32,))
    noise = torch.randn_like(x0)
    ab = alpha_bar[t][:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    loss = F.mse_loss(model(xt, t), noise)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

INFONCE = """
# SimCLR-style InfoNCE on two augmented views of random feature vectors.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
data = torch.randn(1024, 32)
encoder = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 64))
opt = torch.optim.SGD(encoder.parameters(), lr=0.05, momentum=0.9)
tau = 0.5
for step in range(120):
    x = data[torch.randint(0, 1024, (64,))]
    v1 = x + 0.8 * torch.randn_like(x)
    v2 = x * (torch.rand_like(x) > 0.3)
    z1 = F.normalize(encoder(v1), dim=1)
    z2 = F.normalize(encoder(v2), dim=1)
    logits = z1 @ z2.t() / tau
    labels = torch.arange(64)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

CHAR_LM = """
# char-level GRU language model, trained with Adam and gradient clipping.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
text = ("the quick brown fox jumps over the lazy dog. " * 60
        + "she sells sea shells by the sea shore. " * 60)
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text])
V, B, L = len(chars), 16, 32


class CharRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 64)
        self.rnn = nn.GRU(64, 128, batch_first=True)
        self.head = nn.Linear(128, V)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.head(h)


model = CharRNN()
opt = torch.optim.Adam(model.parameters(), lr=LR)  # LR_LINE
for it in range(120):
    ix = torch.randint(0, len(data) - L - 1, (B,))
    x = torch.stack([data[i:i + L] for i in ix])
    y = torch.stack([data[i + 1:i + L + 1] for i in ix])
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
"""

MLP_LR_SMALL = """
import torch
import torch.nn as nn

torch.manual_seed(0)
X = torch.randn(512, 10)
y = (X[:, 0] + X[:, 1] > 0).long()
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.SGD(model.parameters(), lr=1e-7)  # BUG
crit = nn.CrossEntropyLoss()
for epoch in range(8):
    for i in range(0, 512, 64):
        loss = crit(model(X[i:i + 64]), y[i:i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
"""

HEALTHY = {
    "reinforce": REINFORCE,
    "dqn": DQN,
    "gan": GAN,
    "ddpm": DDPM,
    "infonce": INFONCE,
    "char_lm_ok": CHAR_LM.replace("lr=LR", "lr=3e-3"),
}
BUGGY = {
    "char_lm_lr_high": CHAR_LM.replace("lr=LR", "lr=3.0"),
    "mlp_lr_small": MLP_LR_SMALL,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("objectives")
    jobs = {}
    for name, text in {**HEALTHY, **BUGGY}.items():
        folder = base / name
        write(folder, f"{name}.py", text)
        jobs[name] = lambda folder=folder, name=name: td(folder, "run", f"{name}.py")
    return run_all(jobs)


def _loud(result, codes=("TD108", "TD210")):
    return [
        (f["code"], f["severity"], f["title"])
        for f in result.findings()["findings"]
        if f["code"] in codes and f["severity"] in ("warning", "error")
    ]


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_objectives_get_no_td108_td210_warning(runs, name):
    result = runs[name]
    assert result.rc == 0, result
    assert _loud(result) == [], result


def test_what_was_judged_is_said(runs):
    # an RL loss that grows with the episodes is said, at info at most, to be hand-written
    for f in runs["reinforce"].findings()["findings"]:
        if f["code"] in ("TD108", "TD210"):
            assert f["severity"] == "info" and f["evidence"]["judged"]


def test_lr_far_too_high_behind_clipping_is_caught(runs):
    result = runs["char_lm_lr_high"]
    f = result.finding("TD108")
    assert f["severity"] == "warning"
    hot = f["evidence"]["lr_too_high"]
    assert hot["max_norm"] == 1.0 and hot["clipped_steps"] >= 0.9 * hot["clip_steps"]
    assert hot["update_to_initial"] >= 1.0
    assert "far too high" in f["cause"] and "judged: supervised cross_entropy" in f["cause"]
    folder = result.cwd
    line = line_of(folder / "char_lm_lr_high.py", "LR_LINE")
    assert f["where"]["source"] == f"char_lm_lr_high.py:{line}"
    # the jump within the first steps is a divergence from the loss before any update
    g = result.finding("TD210")
    assert g["severity"] == "error" and g["evidence"]["kind"] == "divergence"


def test_lr_far_too_small_is_still_td108(runs):
    result = runs["mlp_lr_small"]
    f = result.finding("TD108")
    assert f["severity"] == "warning" and "updates are tiny" in f["cause"]
    line = line_of(result.cwd / "mlp_lr_small.py", "# BUG")
    assert f["where"]["source"] == f"mlp_lr_small.py:{line}"

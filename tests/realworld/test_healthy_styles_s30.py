"""Healthy programs of styles nobody here wrote before, under the zero-code `traindoctor run`
(session 30; the full set, 42 programs, is in /work/shared/healthy_styles_s30/).

Two backward passes per optimizer step are not gradient accumulation when the second pass
does not add onto the first in .grad: Sharpness-Aware Minimization (Foret et al. 2021) zeroes
the gradients between its two forward/backward passes, a first-order DARTS step (Liu et al.
2019) backpropagates a validation loss for the architecture's optimizer and a training loss
for the weights' optimizer, each zeroing its own params, and replicas of a model written by
hand backpropagate one half batch each into their own params. None is TD515. ArcFace's
`where(one_hot, cos(theta + m), cos)` routes each element's gradient to one of two trained
branches: nothing is blocked (no TD301). A hypernetwork's target, a module on the meta device
run by torch.func.functional_call with generated weights, is no model of the run (no TD102,
TD103, nor internal errors from reading its data). The accumulation these must not hide, four
micro-batch losses summed with SGD, is still TD515.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import loud, reported_batch

pytestmark = pytest.mark.slow

SAM = """
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)

class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_cls, rho=0.05, **kw):
        super().__init__(params, dict(rho=rho, **kw))
        self.base = base_cls(self.param_groups, **kw)

    @torch.no_grad()
    def first_step(self):
        grads = [p.grad.norm(2) for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.norm(torch.stack(grads), 2)
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    e = p.grad * (g["rho"] / (norm + 1e-12))
                    p.add_(e)
                    self.state[p]["e_w"] = e
        self.zero_grad()

    @torch.no_grad()
    def second_step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.sub_(self.state[p]["e_w"])
        self.base.step()
        self.zero_grad()

W = torch.randn(20, 4)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
for step in range(60):
    x = torch.randn(128, 20)
    y = (x @ W).argmax(1)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.first_step()
    F.cross_entropy(model(x), y).backward()
    opt.second_step()
"""

DARTS = """
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)

class Mixed(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ops = nn.ModuleList([nn.Identity(), nn.Sequential(nn.Linear(d, d), nn.ReLU()), nn.Linear(d, d)])

    def forward(self, x, w):
        return sum(wi * op(x) for wi, op in zip(w, self.ops))

class Net(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.stem = nn.Linear(10, d)
        self.cells = nn.ModuleList([Mixed(d) for _ in range(2)])
        self.head = nn.Linear(d, 3)
        self.alpha = nn.Parameter(1e-3 * torch.randn(2, 3))

    def weights(self):
        return [p for n, p in self.named_parameters() if n != "alpha"]

    def forward(self, x):
        h = self.stem(x)
        for c, a in zip(self.cells, self.alpha):
            h = c(h, F.softmax(a, -1))
        return self.head(h)

net = Net()
W = torch.randn(10, 3)

def batch(n=128):
    x = torch.randn(n, 10)
    return x, (torch.sin(x) @ W).argmax(1)

w_opt = torch.optim.SGD(net.weights(), lr=0.05, momentum=0.9, weight_decay=3e-4)
a_opt = torch.optim.Adam([net.alpha], lr=3e-3, betas=(0.5, 0.999))
for step in range(60):
    xv, yv = batch()
    a_opt.zero_grad()
    F.cross_entropy(net(xv), yv).backward()
    a_opt.step()
    xt, yt = batch()
    w_opt.zero_grad()
    loss = F.cross_entropy(net(xt), yt)
    loss.backward()
    nn.utils.clip_grad_norm_(net.weights(), 5.0)
    w_opt.step()
"""

REPLICAS = """
import copy, torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
W = torch.randn(12, 1)
r0 = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 1))
r1 = copy.deepcopy(r0)
opt = torch.optim.SGD(r0.parameters(), lr=0.05, momentum=0.9)
for step in range(60):
    x = torch.randn(128, 12)
    y = torch.tanh(x @ W)
    l0 = F.mse_loss(r0(x[:64]), y[:64])
    l1 = F.mse_loss(r1(x[64:]), y[64:])
    opt.zero_grad(); r1.zero_grad(); l0.backward(); l1.backward()
    with torch.no_grad():
        for p0, p1 in zip(r0.parameters(), r1.parameters()):
            p0.grad.add_(p1.grad).div_(2)
    opt.step()
    with torch.no_grad():
        for p0, p1 in zip(r0.parameters(), r1.parameters()):
            p1.copy_(p0)
"""

ARCFACE = """
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
K = 20
protos = torch.randn(K, 32)
lab = torch.randint(0, K, (4000,))
X = protos[lab] + 0.8 * torch.randn(4000, 32)

class ArcHead(nn.Module):
    def __init__(self, d, k, s=16.0, m=0.3):
        super().__init__()
        self.W = nn.Parameter(torch.randn(k, d) * 0.01)
        self.s, self.m = s, m

    def forward(self, z, y):
        cos = F.linear(F.normalize(z), F.normalize(self.W)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cos) + self.m)
        onehot = F.one_hot(y, cos.size(1)).bool()
        return self.s * torch.where(onehot, target, cos)

backbone = nn.Sequential(nn.Linear(32, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 64), nn.BatchNorm1d(64))
head = ArcHead(64, K)
params = list(backbone.parameters()) + list(head.parameters())
opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
for step in range(60):
    i = torch.randint(0, 4000, (128,))
    loss = F.cross_entropy(head(backbone(X[i]), lab[i]), lab[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

HYPERNETWORK = """
import torch, torch.nn as nn, torch.nn.functional as F
from torch.func import functional_call
torch.manual_seed(0)
NT = 8
amps, phases = torch.rand(NT) * 2 + 0.5, torch.rand(NT) * 3
target = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1)).to("meta")
shapes = {n: p.shape for n, p in target.named_parameters()}

class Hyper(nn.Module):
    def __init__(self):
        super().__init__()
        self.task = nn.Embedding(NT, 8)
        self.net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, sum(s.numel() for s in shapes.values())))

    def forward(self, t):
        flat, out, i = self.net(self.task(t)), {}, 0
        for n, s in shapes.items():
            out[n] = flat[i:i + s.numel()].view(s)
            i += s.numel()
        return out

h = Hyper()
opt = torch.optim.Adam(h.parameters(), lr=1e-3)
for step in range(60):
    t = int(torch.randint(0, NT, ()))
    x = torch.rand(64, 1) * 6 - 3
    loss = F.mse_loss(functional_call(target, h(torch.tensor(t)), (x,)), amps[t] * torch.sin(x + phases[t]))
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

SUMMED = """
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
W = torch.randn(20, 4)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
for step in range(240):
    x = torch.randn(32, 20)
    loss = F.cross_entropy(model(x), (x @ W).argmax(1))
    loss.backward()  # four micro-batches summed
    if (step + 1) % 4 == 0:
        opt.step()
        opt.zero_grad(set_to_none=False)
"""

HEALTHY = {
    "sam": SAM,
    "darts_first_order": DARTS,
    "replicas_by_hand": REPLICAS,
    "arcface": ARCFACE,
    "hypernetwork": HYPERNETWORK,
}
BUGGY = {"accumulation_summed": SUMMED}

runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_summed_micro_batches_are_still_td515(runs):
    r = runs["accumulation_summed"]
    assert "TD515" in loud(r), r


def test_a_meta_template_is_no_model_and_breaks_no_probe(runs):
    r = runs["hypernetwork"]
    assert r.findings().get("internal_errors", []) == [], r

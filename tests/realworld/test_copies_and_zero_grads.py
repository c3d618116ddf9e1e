"""Parameters that are not meant to get a gradient or be in the optimizer, on standalone scripts
written the way users write them (cleanrl-style DQN, BYOL, mean teacher, torch's AveragedModel,
a timm/yolov5-style ModelEMA class, a classic Conv+BatchNorm CNN), run unchanged under the
zero-code `traindoctor run`.

- A copy of the trained weights that changes by copy or averaging, never by gradient (a DQN
  target network with hard or Polyak updates, a BYOL target updated with torch._foreach_lerp_,
  a mean teacher, AveragedModel), or a separately built teacher run only under no_grad, is not
  TD103/TD102 (each was two errors before).
- A bias right before a BatchNorm does not move under plain SGD (its gradient is 0 up to
  rounding): TD104 info with the fix bias=False (was an error blaming float resolution).
- An auxiliary head that only some batches train is not TD102.
- Still caught: an EMA copy that is never updated but evaluated each epoch (TD405 in zero-code
  mode, at the line that evaluates it; missed before), a head left out of the optimizer
  (TD103), a layer never used in forward (TD102).
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import line_of, loud, run_scripts

DQN_HARD = """
# Tiny DQN in the style of cleanrl's dqn.py: the target network is a copy refreshed every N steps.
import random
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

class QNetwork(nn.Module):
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(obs_dim, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, n_actions)
        )

    def forward(self, x):
        return self.network(x)

torch.manual_seed(1)
random.seed(1)
obs_dim, n_actions, gamma = 4, 2, 0.99
q_network = QNetwork(obs_dim, n_actions)
optimizer = optim.Adam(q_network.parameters(), lr=2.5e-4)
target_network = QNetwork(obs_dim, n_actions)
target_network.load_state_dict(q_network.state_dict())

buf_obs = torch.randn(512, obs_dim)
buf_next = buf_obs + 0.1 * torch.randn(512, obs_dim)
buf_act = torch.randint(0, n_actions, (512,))
buf_rew = (buf_obs[:, 0] > 0).float()
buf_done = (torch.rand(512) < 0.05).float()

for global_step in range(60):
    idx = torch.randint(0, 512, (32,))
    with torch.no_grad():
        target_max, _ = target_network(buf_next[idx]).max(dim=1)
        td_target = buf_rew[idx] + gamma * target_max * (1 - buf_done[idx])
    old_val = q_network(buf_obs[idx]).gather(1, buf_act[idx].unsqueeze(1)).squeeze()
    loss = F.mse_loss(td_target, old_val)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if global_step % 10 == 0:
        target_network.load_state_dict(q_network.state_dict())
"""

DQN_SOFT = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
def mlp():
    return nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 3))

q_network = mlp()
target_network = mlp()
target_network.load_state_dict(q_network.state_dict())
optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-3)
tau = 0.005
obs = torch.randn(1024, 6); nxt = torch.randn(1024, 6)
act = torch.randint(0, 3, (1024,)); rew = obs[:, 0] * (act == 0) + obs[:, 1] * (act == 1)
for step in range(60):
    i = torch.randint(0, 1024, (64,))
    with torch.no_grad():
        q_next = target_network(nxt[i]).max(1).values
        y = rew[i] + 0.5 * q_next
    q = q_network(obs[i]).gather(1, act[i, None]).squeeze(1)
    loss = F.smooth_l1_loss(q, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for target_param, q_param in zip(target_network.parameters(), q_network.parameters()):
        target_param.data.copy_(tau * q_param.data + (1.0 - tau) * target_param.data)
"""

BYOL = """
# BYOL-style: online encoder+projector+predictor trained, target = EMA of online, via _foreach_lerp_
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32))
        self.projector = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    def forward(self, x):
        return self.projector(self.backbone(x))

online = Encoder()
predictor = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
target = copy.deepcopy(online)
opt = torch.optim.SGD(list(online.parameters()) + list(predictor.parameters()), lr=0.05, momentum=0.9)

def byol_loss(p, z):
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()

data = torch.randn(2048, 16)
for step in range(40):
    x = data[torch.randint(0, 2048, (64,))]
    v1 = x + 0.1 * torch.randn_like(x)
    v2 = x + 0.1 * torch.randn_like(x)
    p1, p2 = predictor(online(v1)), predictor(online(v2))
    with torch.no_grad():
        z1, z2 = target(v1), target(v2)
    loss = byol_loss(p1, z2) + byol_loss(p2, z1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        tp = list(target.parameters())
        op = [p.detach() for p in online.parameters()]
        torch._foreach_lerp_(tp, op, 1 - 0.99)
"""

MEAN_TEACHER = """
# Mean teacher (semi-supervised): teacher = EMA of student, called with grad enabled, output detached.
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
student = nn.Sequential(nn.Linear(10, 50), nn.ReLU(), nn.Dropout(0.1), nn.Linear(50, 4))
teacher = copy.deepcopy(student)
optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)

def update_ema(ema_model, model, alpha):
    for ema_p, p in zip(ema_model.parameters(), model.parameters()):
        ema_p.data.mul_(alpha).add_(p.detach(), alpha=1 - alpha)

X = torch.randn(600, 10)
Y = (X[:, :4]).argmax(1)
for step in range(60):
    i = torch.randint(0, 600, (32,))
    u = torch.randint(0, 600, (32,))
    x, y = X[i], Y[i]
    xu = X[u] + 0.05 * torch.randn(32, 10)
    logits = student(x)
    s_u = student(xu)
    t_u = teacher(xu).detach()
    cons = F.mse_loss(F.softmax(s_u, 1), F.softmax(t_u, 1))
    loss = F.cross_entropy(logits, y) + 1.0 * cons
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    update_ema(teacher, student, 0.99)

teacher.eval()
with torch.no_grad():
    acc = (teacher(X).argmax(1) == Y).float().mean()
print("teacher acc", acc.item())
"""

AVERAGED_MODEL = """
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, SWALR, get_ema_multi_avg_fn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
X = torch.randn(512, 8); w = torch.randn(8, 1); Y = X @ w
Xv = torch.randn(128, 8); Yv = Xv @ w


def evaluate(m):
    m.eval()
    with torch.no_grad():
        vl = nn.functional.mse_loss(m(Xv), Yv)
    m.train()
    return vl.item()


print("before training", evaluate(ema_model))
for epoch in range(5):
    for b in range(16):
        i = torch.randint(0, 512, (32,))
        loss = nn.functional.mse_loss(model(X[i]), Y[i])
        opt.zero_grad(); loss.backward(); opt.step()
        ema_model.update_parameters(model)
    print(epoch, evaluate(ema_model))
"""

DISTILL = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
teacher = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 5))
student = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))
optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
X = torch.randn(1024, 20)
Y = X[:, :5].argmax(1)
T = 2.0
for step in range(60):
    i = torch.randint(0, 1024, (64,))
    with torch.no_grad():
        t_logits = teacher(X[i])
    s_logits = student(X[i])
    kd = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean")
    loss = F.cross_entropy(s_logits, Y[i]) + 0.5 * kd * T * T
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

CONV_BIAS_BN = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)   # bias=True (the default) before a BatchNorm
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.bn3 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.fc1(x.flatten(1))))
        return self.fc2(x)


torch.manual_seed(0)
model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
X = torch.randn(512, 1, 16, 16)
Y = torch.randint(0, 10, (512,))
X[torch.arange(512), 0, Y, Y] += 3
for step in range(40):
    i = torch.randint(0, 512, (32,))
    loss = F.cross_entropy(model(X[i]), Y[i])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

AUX_SOMETIMES = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.head = nn.Linear(32, 3)
        self.aux_head = nn.Linear(32, 2)

    def forward(self, x):
        h = self.body(x)
        return self.head(h), self.aux_head(h)


torch.manual_seed(0)
model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
X = torch.randn(800, 10)
Y = X[:, :3].argmax(1)
for step in range(60):
    i = torch.randint(0, 800, (32,))
    out, aux = model(X[i])
    loss = F.cross_entropy(out, Y[i])
    if step % 4 == 3:                     # only these batches have auxiliary labels
        loss = loss + 0.3 * F.cross_entropy(aux, (X[i, 0] > 0).long())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

EMA_NEVER_UPDATED = """
# BUG: EMA copy taken once, never updated, but used for evaluation
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

class ModelEMA:
    def __init__(self, model, decay=0.999):
        self.ema = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.ema.parameters():
            p.requires_grad_(False)
    @torch.no_grad()
    def update(self, model):
        for e, m in zip(self.ema.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(m.detach(), alpha=1 - self.decay)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
ema = ModelEMA(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
X = torch.randn(1000, 20); Y = X[:, :5].argmax(1)
Xv = torch.randn(200, 20); Yv = Xv[:, :5].argmax(1)
for epoch in range(6):
    model.train()
    for b in range(10):
        i = torch.randint(0, 1000, (64,))
        loss = F.cross_entropy(model(X[i]), Y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        # ema.update(model)   <- forgotten
    with torch.no_grad():
        out = ema.ema(Xv)
        val_loss = F.cross_entropy(out, Yv)
        acc = (out.argmax(1) == Yv).float().mean()
    print(f"epoch {epoch} val_loss {val_loss.item():.4f} acc {acc.item():.3f}")
"""

EMA_NEVER_UPDATED_EVALUATED_FIRST = """
# BUG: EMA copy taken once, never updated, but used for evaluation
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

class ModelEMA:
    def __init__(self, model, decay=0.999):
        self.ema = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.ema.parameters():
            p.requires_grad_(False)
    @torch.no_grad()
    def update(self, model):
        for e, m in zip(self.ema.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(m.detach(), alpha=1 - self.decay)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
ema = ModelEMA(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
X = torch.randn(1000, 20); Y = X[:, :5].argmax(1)
Xv = torch.randn(200, 20); Yv = Xv[:, :5].argmax(1)
with torch.no_grad():
    print("initial val loss", F.cross_entropy(ema.ema(Xv), Yv).item())
for epoch in range(6):
    model.train()
    for b in range(10):
        i = torch.randint(0, 1000, (64,))
        loss = F.cross_entropy(model(X[i]), Y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        # ema.update(model)   <- forgotten
    with torch.no_grad():
        out = ema.ema(Xv)
        val_loss = F.cross_entropy(out, Yv)
        acc = (out.argmax(1) == Yv).float().mean()
    print(f"epoch {epoch} val_loss {val_loss.item():.4f} acc {acc.item():.3f}")
"""

EMA_UPDATED = """
# The EMA copy is updated after every optimizer step and evaluated each epoch
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

class ModelEMA:
    def __init__(self, model, decay=0.999):
        self.ema = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.ema.parameters():
            p.requires_grad_(False)
    @torch.no_grad()
    def update(self, model):
        for e, m in zip(self.ema.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(m.detach(), alpha=1 - self.decay)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
ema = ModelEMA(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
X = torch.randn(1000, 20); Y = X[:, :5].argmax(1)
Xv = torch.randn(200, 20); Yv = Xv[:, :5].argmax(1)
for epoch in range(6):
    model.train()
    for b in range(10):
        i = torch.randint(0, 1000, (64,))
        loss = F.cross_entropy(model(X[i]), Y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
    with torch.no_grad():
        out = ema.ema(Xv)
        val_loss = F.cross_entropy(out, Yv)
        acc = (out.argmax(1) == Yv).float().mean()
    print(f"epoch {epoch} val_loss {val_loss.item():.4f} acc {acc.item():.3f}")
"""

HEAD_LEFT_OUT = """
import torch
import torch.nn as nn
import torch.nn.functional as F

class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU())
        self.classifier = nn.Linear(48, 3)
    def forward(self, x):
        return self.classifier(self.features(x))

torch.manual_seed(0)
model = Classifier()
optimizer = torch.optim.Adam(model.features.parameters(), lr=1e-3)   # BUG: classifier left out
X = torch.randn(800, 12); Y = X[:, :3].argmax(1)
for step in range(60):
    i = torch.randint(0, 800, (32,))
    loss = F.cross_entropy(model(X[i]), Y[i])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

UNUSED_LAYER = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 32)
        self.fc2 = nn.Linear(32, 32)   # BUG: defined, never used in forward
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        return self.out(F.relu(self.fc1(x)))


torch.manual_seed(0)
model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
X = torch.randn(800, 10)
Y = X[:, :3].argmax(1)
for step in range(40):
    i = torch.randint(0, 800, (32,))
    loss = F.cross_entropy(model(X[i]), Y[i])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

SCRIPTS = {name.lower(): text for name, text in list(globals().items()) if name.isupper()}
HEALTHY = [
    "dqn_hard",
    "dqn_soft",
    "byol",
    "mean_teacher",
    "averaged_model",
    "distill",
    "conv_bias_bn",
    "aux_sometimes",
    "ema_updated",
]
OURS = {"TD102", "TD103", "TD104", "TD405"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, SCRIPTS)


@pytest.mark.parametrize("name", HEALTHY)
def test_copies_and_zero_gradients_by_construction_are_silent(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    assert loud(r) == [], r.findings()["findings"]


@pytest.mark.parametrize("name", ["dqn_hard", "dqn_soft", "byol", "mean_teacher", "distill"])
def test_target_and_teacher_copies_are_not_reported_at_all(runs, name):
    assert not OURS & set(runs[name].codes()), runs[name].findings()["findings"]


def test_bias_before_batchnorm_is_info_with_the_true_cause(runs):
    r = runs["conv_bias_bn"]
    f = r.finding("TD104")
    assert f["severity"] == "info"
    assert set(f["where"]["params"]) <= {"conv1.bias", "conv2.bias", "fc1.bias"}
    assert set(f["evidence"]["normalized_by"].values()) <= {"bn1", "bn2", "bn3"}
    assert f["evidence"]["max_bias_grad_norm"] < 1e-4 * f["evidence"]["min_weight_grad_norm"]
    assert "bias=False" in f["fix"]


@pytest.mark.parametrize("name", ["ema_never_updated", "ema_never_updated_evaluated_first"])
def test_stale_ema_evaluated_each_epoch_is_td405_at_its_line(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    f = r.finding("TD405")
    assert f["severity"] == "error"
    line = line_of(r.cwd / "train.py", "out = ema.ema(Xv)")
    assert f["where"]["source"] == f"train.py:{line}", f
    assert f["evidence"]["evaluations"] == 6
    assert loud(r) == ["TD405"], r.findings()["findings"]


def test_head_left_out_of_the_optimizer_is_td103(runs):
    r = runs["head_left_out"]
    f = r.finding("TD103")
    assert f["severity"] == "error"
    assert f["where"]["module"] == "classifier"
    line = line_of(r.cwd / "train.py", "torch.optim.Adam(model.features")
    assert f["where"]["source"] == f"train.py:{line}"


def test_layer_never_used_is_td102(runs):
    r = runs["unused_layer"]
    f = r.finding("TD102")
    assert f["severity"] == "error"
    assert f["where"]["module"] == "fc2"
    assert "never called" in f["cause"]

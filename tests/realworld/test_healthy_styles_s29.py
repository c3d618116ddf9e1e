"""Momentum/EMA targets kept in train mode by design, under the zero-code `traindoctor run`:
BYOL (Grill et al. 2020; lucidrains/byol-pytorch) runs its target network, a deepcopy with
requires_grad off and BatchNorm in train mode, under no_grad on both views between the online
forward and the backward, and moves it toward the online weights after each step; a mean
teacher (Tarvainen & Valpola 2017, CuriousAI/mean-teacher) runs its EMA teacher, in train mode
as in the official code, on two noisy views before the student's forward. Neither is a frozen
module (its weights move) nor a validation (it runs in every step, its output is the loss's
target): no TD516, no TD403. The same programs with the target never updated (a frozen copy
whose BatchNorm statistics drift) and with the student validated in train mode every 20 steps
are still TD516 and TD403. Reptile's per-task optimizers are neither stale (TD111) nor
accumulation (TD515)."""

from __future__ import annotations

import pytest

from tests.cli.conftest import reported_batch

BYOL = """
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
protos = torch.randn(10, 32)
lab = torch.randint(0, 10, (2000,))
X = protos[lab] + 0.5 * torch.randn(2000, 32)


def view(x):
    return x * (torch.rand_like(x) > 0.2) + 0.3 * torch.randn_like(x)


def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, o))


online = nn.Sequential(mlp(32, 64, 32), mlp(32, 64, 16))  # encoder + projector
predictor = mlp(16, 64, 16)
target = copy.deepcopy(online)
for p in target.parameters():
    p.requires_grad_(False)
opt = torch.optim.Adam(list(online.parameters()) + list(predictor.parameters()), lr=1e-3)


def reg(p, z):
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


for step in range(60):
    x = X[torch.randint(0, 2000, (64,))]
    v1, v2 = view(x), view(x)
    p1, p2 = predictor(online(v1)), predictor(online(v2))
    with torch.no_grad():
        z1, z2 = target(v1), target(v2)
    loss = reg(p1, z2) + reg(p2, z1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for po, pt in zip(online.parameters(), target.parameters()):
            EMA_UPDATE
print("done", loss.item())
"""

MEAN_TEACHER = """
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
X = torch.randn(2000, 10)
y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
labelled = torch.zeros(2000, dtype=torch.bool)
labelled[:150] = True
Xv, yv = torch.randn(256, 10), None
student = nn.Sequential(nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 3))
teacher = copy.deepcopy(student)
for p in teacher.parameters():
    p.detach_()
opt = torch.optim.Adam(student.parameters(), lr=2e-3)
for step in range(60):
    i = torch.randint(0, 2000, (64,))
    x = X[i]
    with torch.no_grad():
        t1 = F.softmax(teacher(x + 0.1 * torch.randn_like(x)), 1)
        t2 = F.softmax(teacher(x + 0.1 * torch.randn_like(x)), 1)
    out = student(x + 0.1 * torch.randn_like(x))
    lab = labelled[i]
    ce = F.cross_entropy(out[lab], y[i][lab]) if lab.any() else out.sum() * 0
    loss = ce + min(1.0, step / 20) * 10 * F.mse_loss(F.softmax(out, 1), (t1 + t2) / 2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        a = min(1 - 1 / (step + 1), 0.99)
        for tp, sp in zip(teacher.parameters(), student.parameters()):
            tp.mul_(a).add_(sp, alpha=1 - a)
    if step % 20 == 19:
        VALIDATE
print("done", loss.item())
"""

VALIDATE_IN_EVAL = """student.eval()
        with torch.no_grad():
            val = [student(xb).argmax(1) for xb in Xv.split(64)]
        student.train()"""
VALIDATE_IN_TRAIN = """with torch.no_grad():
            val = [student(xb).argmax(1) for xb in Xv.split(64)]"""

# Reptile (Nichol et al. 2018, openai/supervised-reptile's sine example): a deepcopy and a new
# SGD per task, 5 steps each, the meta-weights moved toward the adapted copy by hand. Was a
# TD111 error (the per-task optimizers built after the last sampled check were read as never
# getting a gradient) and a TD515 warning (the step clock merged 3 optimizers' steps).
REPTILE = """
# Reptile (Nichol et al. 2018) on sine-wave regression: per task, a deepcopy of the meta-model
# trained by SGD for k steps, then the meta-weights moved toward it by hand.
import copy
import math
import torch
import torch.nn as nn

torch.manual_seed(0)
meta = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def task():
    a, ph = torch.rand(()) * 4.9 + 0.1, torch.rand(()) * math.pi
    return lambda x: a * torch.sin(x + ph)


def adapt(model, f, steps, lr=0.02):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.rand(10, 1) * 10 - 5
        loss = ((model(x) - f(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def eval_meta():
    torch.manual_seed(123)
    errs = []
    for _ in range(3):
        f = task()
        m = copy.deepcopy(meta)
        adapt(m, f, 8)
        x = torch.linspace(-5, 5, 50)[:, None]
        with torch.no_grad():
            errs.append(((m(x) - f(x)) ** 2).mean().item())
    return sum(errs) / len(errs)


before = eval_meta()
torch.manual_seed(0)
for it in range(80):
    f = task()
    fast = copy.deepcopy(meta)
    adapt(fast, f, 5)
    eps = 0.1 * (1 - it / 80)
    with torch.no_grad():
        for p, q in zip(meta.parameters(), fast.parameters()):
            p += eps * (q - p)
print("post-adaptation mse before/after meta-training", before, eval_meta())
"""

HEALTHY = {
    "reptile_per_task_optimizers": REPTILE,
    "byol_ema_target": BYOL.replace("EMA_UPDATE", "pt.mul_(0.99).add_(po, alpha=0.01)"),
    "mean_teacher_two_views": MEAN_TEACHER.replace("VALIDATE", VALIDATE_IN_EVAL),
}
BUGGY = {
    # The target never moves: a frozen copy in train mode whose BatchNorm statistics drift.
    "byol_target_never_updated": BYOL.replace("EMA_UPDATE", "pass"),
    # The student validated under no_grad without eval(), beside the per-step teacher passes.
    "mean_teacher_student_validated_in_train_mode": MEAN_TEACHER.replace(
        "VALIDATE", VALIDATE_IN_TRAIN
    ),
}

pytestmark = pytest.mark.slow

runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_a_frozen_copy_whose_statistics_drift_is_td516(runs):
    r = runs["byol_target_never_updated"]
    assert r.rc == 0, r
    found = r.finding("TD516")
    assert found["severity"] == "warning", r
    assert found["evidence"]["bn_drift"], found


def test_a_validation_beside_teacher_passes_is_td403(runs):
    r = runs["mean_teacher_student_validated_in_train_mode"]
    assert r.rc == 0, r
    found = r.finding("TD403")
    assert found["severity"] == "warning", r
    assert found["evidence"]["validations_affected"] == 3, found

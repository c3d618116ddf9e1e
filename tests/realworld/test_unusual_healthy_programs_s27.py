"""Healthy styles found by the session-27 ecosystem programs (torchdiffeq's ode_demo.py and
latent_ode.py, an SGNS word2vec, Informer, a second-order MAML), each reduced to a small
independent reproduction of the pattern that tripped a rule, with a buggy twin the rule must
still catch.

An ODE solver runs after the model's forward (the vector field is the model, called at every
solver stage), so its arithmetic is inside the loss code's window. Its adaptive step-size
control runs under `torch.no_grad()` (torchdiffeq's `_optimal_step_size`), and the next time
is `t1 = t0 + dt`: a scalar add of a no_grad tensor to a live one (t0 carries the graph of the
first step size, computed from the field). TD302 said error ("the term added to the loss ...
trains nothing"); but the loss never sums t1: it is a time, used inside the solver's stages.
A cut tensor is a detached loss term only where the loss sums, averages or scales the add in.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.doctor import Doctor
from traindoctor.findings import Severity
from traindoctor.integrations.autopatch import attached


class Field(nn.Module):
    """dy/dt = net(y^3), as in torchdiffeq's ode_demo."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y**3)


def heun(field: nn.Module, y0: torch.Tensor, stages: int = 6) -> torch.Tensor:
    """An adaptive Heun solver: the first step size comes from the field (it carries a graph),
    the next ones from an error estimate under no_grad; the time advances by `t + dt`."""
    t = torch.zeros(())
    f0 = field(t, y0)
    dt = 0.1 / (1 + f0.abs().max())
    y = y0
    for _ in range(stages):
        k1 = field(t, y)
        k2 = field(t + dt, y + dt * k1)
        err = (dt * (k2 - k1) / 2).abs().max()
        y = y + dt * (k1 + k2) / 2
        with torch.no_grad():
            factor = torch.clamp(0.9 * (1e-3 / (err + 1e-12)) ** 0.5, 0.2, 5.0)
            dt_next = dt.type_as(y) * factor
        t = t + dt
        dt = dt_next
    return y


def _run(tmp_path, detached_extra: bool) -> list:
    torch.manual_seed(0)
    field = Field()
    opt = torch.optim.RMSprop(field.parameters(), lr=1e-3)
    doc = td.watch(field, opt, out_dir=tmp_path, console=False)
    true_a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
    for _ in range(25):
        y0 = torch.randn(16, 2) * 0.5
        target = y0 + 0.05 * (y0**3) @ true_a
        y = heun(field, y0)
        loss = (y - target).abs().mean()
        if detached_extra:
            loss = loss + 0.1 * y.detach().pow(2).mean()  # BUG: trains nothing
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = doc.close()
    assert not report.internal_errors
    return report.findings


def test_an_ode_solver_time_step_is_not_a_detached_loss_term(tmp_path):
    findings = _run(tmp_path, detached_extra=False)
    assert not [f for f in findings if f.code == "TD302"], [
        (f.code, f.title) for f in findings if f.code == "TD302"
    ]
    loud = [f for f in findings if f.severity in (Severity.ERROR, Severity.WARNING)]
    assert not loud, [(f.code, f.title) for f in loud]


def test_a_detached_term_added_after_the_solver_is_still_caught(tmp_path):
    findings = _run(tmp_path, detached_extra=True)
    top = next(f for f in findings if f.code == "TD302")
    assert top.severity == Severity.ERROR
    assert top.evidence.get("cut") == "detach"
    assert "test_unusual_healthy_programs_s27.py" in str(top.evidence.get("added_at"))


# -- knowledge distillation: a frozen teacher in eval mode --------------------------------
# Joyful-Buffalo/simplest-knowledge-distillation trains a CNN teacher (with a BatchNorm) with
# its own Adam, then calls teacher.eval() and distills a new student with a new Adam. Under
# `traindoctor run` both models are watched: TD402 said error ("the whole model `teacher`
# trained in eval mode") at the student's steps, though the teacher's optimizer no longer
# steps. Only the models whose params the stepping optimizers hold are trained.


def _kd_run(tmp_path, teacher_trained_in_eval: bool) -> list:
    """The script's shape under `traindoctor run` (zero-code: models and optimizers found as
    the script makes them)."""
    torch.manual_seed(0)
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        teacher = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
        t_opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
        w = torch.randn(8, 4)
        if teacher_trained_in_eval:
            teacher.eval()  # BUG: the teacher trains with BatchNorm's running statistics
        for _ in range(15):  # phase 1: the teacher trains
            x = torch.randn(64, 8)
            loss = F.cross_entropy(teacher(x), (x @ w).argmax(1))
            t_opt.zero_grad()
            loss.backward()
            t_opt.step()
        teacher.eval()  # frozen from here on
        student = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
        s_opt = torch.optim.Adam(student.parameters(), lr=1e-2)
        temperature = 2.0
        for _ in range(25):  # phase 2: distillation into the student
            x = torch.randn(64, 8)
            out = student(x)
            with torch.no_grad():
                soft = F.softmax(teacher(x) / temperature, dim=1)
            kd = F.kl_div(F.log_softmax(out / temperature, dim=1), soft, reduction="batchmean")
            loss = 0.5 * kd * temperature**2 + 0.5 * F.cross_entropy(out, (x @ w).argmax(1))
            s_opt.zero_grad()
            loss.backward()
            s_opt.step()
    report = doctor.close()
    assert not report.internal_errors
    return report.findings


def test_a_frozen_teacher_in_eval_mode_is_not_trained_in_eval_mode(tmp_path):
    findings = _kd_run(tmp_path, teacher_trained_in_eval=False)
    assert not [f for f in findings if f.code == "TD402"], [
        (f.code, f.title) for f in findings if f.code == "TD402"
    ]


def test_a_teacher_trained_in_eval_mode_is_still_caught(tmp_path):
    findings = _kd_run(tmp_path, teacher_trained_in_eval=True)
    top = next(f for f in findings if f.code == "TD402")
    assert top.severity == Severity.ERROR
    assert top.step <= 2

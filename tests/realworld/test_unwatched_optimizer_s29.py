"""An optimizer the loop builds after `td.watch(model, opt)` and never passes to it (session 29).

A teacher watched with its Adam, then a student built with an Adam of its own (distillation);
a classifier trained, then adapted to shifted test data on its own pseudo-labels with a new SGD
(test-time adaptation). The backward passes go on after the watched optimizer's last step, and
the steps are taken by the unwatched one: TD105 said 'optimizer.step() ran 100 time(s) ... then
not once in the following 100 backward passes' as an error on both healthy programs. A global
post-step hook now counts the steps of optimizers that are not watched (unwatched_steps.py):
TD105 names that optimizer in an info. A step() under a condition that stopped being true, with
no optimizer stepping at all, is still the error.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import optimizer as optim_module

import traindoctor as td
from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, make_timeline

_LOUD = (Severity.ERROR, Severity.WARNING)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=g)
    return x, (x[:, :3] * torch.tensor([1.0, -1.0, 0.5])).argmax(1)


def distill(watch_dir=None) -> tuple[list, list[torch.Tensor]]:
    """Teacher phase watched, then a student with a new Adam (never passed to td.watch)."""
    torch.manual_seed(0)
    x, y = _data()
    teacher = _net()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    doc = td.watch(teacher, opt, out_dir=watch_dir, console=False) if watch_dir else None
    for _ in range(30):
        idx = torch.randint(0, 512, (64,))
        loss = F.cross_entropy(teacher(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    student = _net()
    s_opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(30):
        idx = torch.randint(0, 512, (64,))
        with torch.no_grad():
            soft = F.softmax(teacher(x[idx]) / 2.0, dim=1)
        out = student(x[idx])
        kd = F.kl_div(F.log_softmax(out / 2.0, dim=1), soft, reduction="batchmean")
        loss = 4.0 * kd + F.cross_entropy(out, y[idx])
        s_opt.zero_grad()
        loss.backward()
        s_opt.step()
    findings = doc.close().findings if doc is not None else []
    return findings, [p.detach().clone() for m in (teacher, student) for p in m.parameters()]


def adapt(tmp_path, bug: bool) -> list:
    """Source training, then test-time adaptation on hard pseudo-labels with a new SGD. With
    `bug`: no adaptation optimizer, and the source optimizer's step sits under a condition
    that is true only for the first phase (`if phase == "train"`, the phase renamed)."""
    torch.manual_seed(0)
    x, y = _data()
    xt = x + 0.5
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    doc = td.watch(net, opt, out_dir=tmp_path, console=False)
    for phase, data in (("train", x), ("adapt", xt)):
        tta = None if bug or phase == "train" else torch.optim.SGD(net.parameters(), lr=1e-3)
        for i in range(0, 512, 32):
            out = net(data[i : i + 32])
            target = y[i : i + 32] if phase == "train" else out.argmax(1).detach()
            loss = F.cross_entropy(out, target)
            opt.zero_grad()
            loss.backward()
            if tta is not None:
                tta.step()
            elif phase == "train":
                opt.step()
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    return report.findings


def _loud(findings: list) -> list:
    return [(f.code, f.severity.name, f.title) for f in findings if f.severity in _LOUD]


def test_student_with_its_own_optimizer_is_silent_and_training_unchanged(tmp_path):
    hooks = len(optim_module._global_optimizer_post_hooks)
    findings, watched = distill(tmp_path)
    assert len(optim_module._global_optimizer_post_hooks) == hooks  # removed at close
    assert not _loud(findings), _loud(findings)
    (f,) = [f for f in findings if f.code == "TD105"]
    assert f.severity == Severity.INFO
    assert "Adam (30 steps)" in f.title and "not given to traindoctor" in f.title
    assert "none of the watched model's params" in f.cause
    assert "td.watch" in f.fix
    _, plain = distill()
    assert all(torch.equal(a, b) for a, b in zip(watched, plain, strict=True))


def test_test_time_adaptation_with_a_new_sgd_is_silent(tmp_path):
    findings = adapt(tmp_path, bug=False)
    assert not _loud(findings), _loud(findings)
    (f,) = [f for f in findings if f.code == "TD105"]
    assert f.severity == Severity.INFO and "SGD (16 steps)" in f.title
    assert "holds params of the watched model" in f.cause


def test_step_under_a_condition_no_longer_true_is_still_an_error(tmp_path):
    findings = adapt(tmp_path, bug=True)
    (f,) = [f for f in findings if f.code == "TD105"]
    assert f.severity == Severity.ERROR
    assert "then not once in the following 16 backward passes" in f.title


def test_an_unwatched_optimizer_that_stopped_before_does_not_excuse_the_watched_one():
    # It stepped during the first steps only (a warm-up of another part): the backward passes
    # after the watched optimizer's last step are stepped by nothing.
    steps = {s: {"backward.count": 1, "optim.step": 1} for s in range(1, 11)}
    steps[11] = {"backward.count": 20}
    tl = make_timeline(params=["w"], steps=steps)
    tl.facts["unwatched_optimizers"] = [
        {"class": "SGD", "steps": 5, "first": 1, "last": 5, "holds_watched": False}
    ]
    assert assert_fires("TD105", tl).severity == Severity.ERROR
    tl.facts["unwatched_optimizers"][0]["last"] = 11
    f = assert_fires("TD105", tl)
    # It stepped beside the watched one from step 1 and goes on: a phase, or the watched
    # step() switched off; not told apart, so an info that says both.
    assert f.severity == Severity.INFO and "stepped beside the watched optimizer" in f.cause
    assert "no longer true" in f.cause

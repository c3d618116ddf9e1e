"""`td.watch(model, optimizer)` given a model that is not the one trained (a deep copy, the
teacher instead of the student) reported 'healthy' on a run it never saw: the optimizer's
tensors were foreign and got gradients, which TD111 takes for a learnable loss weight. Now a
TD111 warning says so, naming what was watched and what the optimizer trains. Watching the
trained model through a wrapper (DataParallel, a dict with its teacher, a hand-written
master-weight copy stepped by the optimizer) stays silent."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traindoctor as td


def _net():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _run(case: str, tmp_path):
    torch.manual_seed(0)
    model = _net()
    teacher = _net().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    master = None
    watched = {
        "copy": copy.deepcopy(model),
        "teacher": teacher,
        "right": model,
        "data_parallel": nn.DataParallel(model),
        "with_teacher": {"student": model, "teacher": teacher},
        "master_weights": model,
    }[case]
    if case == "master_weights":  # fp32 master copies stepped by the optimizer, copied back
        master = [p.detach().clone().requires_grad_() for p in model.parameters()]
        opt = torch.optim.SGD(master, lr=0.1)
    x = torch.randn(256, 16)
    y = x[:, :4].argmax(1)
    g = torch.Generator().manual_seed(1)
    with td.watch(watched, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(40):
            idx = torch.randint(0, 256, (32,), generator=g)
            with torch.no_grad():
                soft = teacher(x[idx]).softmax(-1)
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx]) + 0.1 * F.cross_entropy(out, soft)
            opt.zero_grad()
            model.zero_grad()
            loss.backward()
            if master is not None:
                for m, p in zip(master, model.parameters()):
                    m.grad = p.grad.clone()
            opt.step()
            if master is not None:
                with torch.no_grad():
                    for m, p in zip(master, model.parameters()):
                        p.copy_(m)
    return doc.report


@pytest.mark.parametrize("case", ["copy", "teacher"])
def test_a_model_that_is_not_trained_is_said(case, tmp_path):
    report = _run(case, tmp_path)
    found = [f for f in report.findings if f.code == "TD111"]
    assert found and found[0].severity.value == "warning", report.findings
    assert "is not the one trained" in found[0].title
    assert found[0].evidence["optimizer_values"] == 676
    assert report.status != "healthy"


@pytest.mark.parametrize("case", ["right", "data_parallel", "with_teacher", "master_weights"])
def test_watching_the_trained_model_stays_silent(case, tmp_path):
    report = _run(case, tmp_path)
    loud = [(f.code, f.title) for f in report.findings if f.severity.value != "info"]
    assert loud == [], loud

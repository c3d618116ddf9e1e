"""A zero-code run (`traindoctor run`) holds the models and optimizers it watches weakly
(_release.py, session 34): a sweep's trial, k-fold's fold, built, trained and dropped by the
script, is freed as it is without traindoctor, its training is unchanged, and what the run
found about it is still reported. A later phase's model the script keeps stays watched."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from traindoctor.doctor import Doctor
from traindoctor.integrations.autopatch import attached


class Net(nn.Module):
    def __init__(self, h: int = 12) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, h), nn.Linear(h, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(400 + step % 4)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def _refs(model: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> list[weakref.ref]:
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return [weakref.ref(o) for o in (model, opt, sched, *model.parameters(), *state, *grads)]


def _sweep(trials: int, head_in_optimizer: bool = True) -> tuple[list[list], list[list[bool]]]:
    """Each trial: a model, Adam (over fc1 only where not `head_in_optimizer`: the head never
    trains), a StepLR, 6 steps, then dropped. Its final params, and which of its objects and
    tensors were still alive after `del` + gc.collect()."""
    torch.manual_seed(0)
    finals, alive = [], []
    for _ in range(trials):
        model = Net()
        params = model.parameters() if head_in_optimizer else model.fc1.parameters()
        opt = torch.optim.Adam(params, lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, 3)
        for step in range(6):
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        finals.append([p.detach().clone() for p in model.parameters()])
        refs = _refs(model, opt, sched)
        del model, opt, sched, params
        gc.collect()
        alive.append([r() is not None for r in refs])
    return finals, alive


def test_a_dropped_trial_is_freed_whole_and_trains_as_without_traindoctor(tmp_path):
    plain, alive = _sweep(3)
    assert not any(map(any, alive))
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        finals, alive = _sweep(3)
        # (read before close: the optimizers keep their positions, the dropped ones as
        # placeholders that hold nothing)
        slots = [type(o).__name__ for o in doctor.optimizers]
    report = doctor.close()
    assert not report.internal_errors, report.internal_errors
    # the model, optimizer, scheduler, params, Adam state and gradients of every trial
    assert [a.count(True) for a in alive] == [0, 0, 0], alive
    assert all(map(torch.equal, sum(finals, []), sum(plain, [])))  # bit-identical
    assert slots == ["DroppedOptimizer"] * 3
    facts = report.timeline.facts
    assert facts["models"] == {"<model>": "Net", "Net": "Net", "Net2": "Net"}
    assert [o["class"] for o in facts["optimizers"]] == ["Adam"] * 3  # described as they were
    assert [o["groups"][0]["params"][0] for o in facts["optimizers"]] == [
        "fc1.weight",
        "Net.fc1.weight",
        "Net2.fc1.weight",
    ]


def test_what_the_run_found_about_dropped_folds_is_still_reported(tmp_path):
    """Each fold's optimizer misses its head (TD103): every fold's head is named, its own
    name (a later fold's tensors reuse the freed ids of an earlier one's)."""
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        _sweep(3, head_in_optimizer=False)
    report = doctor.close()
    assert not report.internal_errors, report.internal_errors
    found = {f.code: f for f in report.findings}
    assert "TD103" in found and found["TD103"].severity.value == "error"
    assert found["TD103"].evidence["params_not_in_optimizer"] == 6
    for head in ("`fc2.*`", "`Net.fc2.*`", "`Net2.fc2.*`"):
        assert head in found["TD103"].title, found["TD103"].title
    params = report.timeline.facts["params"]
    assert all(not e.get("removed") and e["requires_grad"] for e in params.values())
    audit = found["TD502"].evidence  # the three folds' layers, none lost with its fold
    assert audit["total"]["tensors"] == 12 and audit["total"]["trainable_tensors"] == 12


def test_a_later_phase_model_the_script_keeps_stays_watched(tmp_path):
    """Distillation: a teacher trained, then a student built and trained from it; both held."""
    torch.manual_seed(0)
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        teacher = Net(h=16)
        opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
        for step in range(8):
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(teacher(x), y).backward()
            opt.step()
        student = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
        sopt = torch.optim.Adam(student.parameters(), lr=1e-2)
        for step in range(8):
            x, _ = _batch(step)
            with torch.no_grad():
                target = F.softmax(teacher(x), 1)
            sopt.zero_grad()
            F.kl_div(F.log_softmax(student(x), 1), target, reduction="batchmean").backward()
            sopt.step()
        watched = [type(m).__name__ for m in doctor.models.values()]
        slots = [type(o).__name__ for o in doctor.optimizers]
    report = doctor.close()
    assert not report.internal_errors, report.internal_errors
    assert watched == ["Net", "Sequential"] and slots == ["Adam", "Adam"]
    assert report.timeline.facts["models"] == {"<model>": "Net", "Sequential": "Sequential"}
    assert "Sequential.0.weight" in report.timeline.facts["params"]
    assert not [f for f in report.findings if f.severity.value != "info"], report.findings


def test_a_model_dropped_while_its_optimizer_steps_stays_watched(tmp_path):
    """The optimizer keeps the models whose params it holds: a model the script rebinds while
    its optimizer still steps its params (its layers put in a new container, a scripted module
    sharing them) is still the run's model; it is freed once the optimizer goes too."""
    torch.manual_seed(0)
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        first = weakref.ref(model)
        for step in range(20):
            if step == 10:  # the same layers, in a new container
                model = nn.Sequential(model.fc1, nn.ReLU(), model.fc2)
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        gc.collect()
        kept = first() is not None and list(doctor.models.values()) == [first()]
        del opt, model
        gc.collect()
        freed = first() is None
    report = doctor.close()
    assert not report.internal_errors, report.internal_errors
    assert kept and freed
    assert not [f for f in report.findings if f.severity.value != "info"], report.findings

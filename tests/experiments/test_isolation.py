"""The experiments on a copy never touch the user's run (issue 17): the same script with and
without them ends with bit-identical parameters, gradients, optimizer state, BatchNorm buffers,
CPU RNG state and data-loader order, in td.watch and in zero-code mode; an experiment that
raises is recorded, never raised; a custom loss is said to be not replayable."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor import experiments
from traindoctor.doctor import Doctor
from traindoctor.integrations.autopatch import attached


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x))


def script(watch=None, steps: int = 6):
    """A small loop that uses the global RNG (dropout, randperm, a shuffled DataLoader)."""
    torch.manual_seed(0)
    x, y = torch.randn(48, 8), torch.randint(0, 3, (48,))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    doc = watch(model, opt) if watch else None
    seen = []
    step = 0
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            seen.append(yb.clone())
            step += 1
            if step >= steps:
                break
    # The last backward's gradients stay on the params (compared below).
    opt.zero_grad(set_to_none=False)
    F.cross_entropy(model(x[:16]), y[:16]).backward()
    return doc, model, opt, seen


def snapshot(model, opt, seen):
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "grads": {k: v.grad.clone() for k, v in model.named_parameters()},
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
        "opt": [
            {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for s in opt.state.values()
        ],
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        "rng": torch.get_rng_state().clone(),
        "next_random": None,
        "seen": [s.clone() for s in seen],
    }


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), k
        elif isinstance(va, dict):
            same(va, vb)
        elif isinstance(va, list):
            assert len(va) == len(vb), k
            for x, y in zip(va, vb):
                if isinstance(x, dict):
                    same(x, y)
                elif isinstance(x, torch.Tensor):
                    assert torch.equal(x, y), k
                else:
                    assert x == y, k
        else:
            assert va == vb, k


def run_watch(tmp_path, on: bool):
    docs = []

    def watch(model, opt):
        docs.append(td.watch(model, opt, out_dir=tmp_path, console=False))
        return docs[-1]

    with experiments.enable(on):
        _, model, opt, seen = script(watch)
        report = docs[-1].close()
    snap = snapshot(model, opt, seen)
    snap["next_random"] = torch.rand(4)  # the RNG stream goes on as it would have
    return report, snap


def run_zero_code(tmp_path, on: bool):
    with experiments.enable(on):
        doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False, script="iso")
        with attached(doctor):
            _, model, opt, seen = script()
        report = doctor.close()
    snap = snapshot(model, opt, seen)
    snap["next_random"] = torch.rand(4)
    return report, snap


@pytest.mark.parametrize("runner", [run_watch, run_zero_code], ids=["watch", "zero-code"])
def test_user_run_is_bit_identical_with_and_without_experiments(runner, tmp_path):
    torch.set_num_threads(1)
    off_report, off = runner(tmp_path / "off", False)
    on_report, on = runner(tmp_path / "on", True)
    same(off, on)
    assert not on_report.internal_errors, on_report.internal_errors
    ran = {e["name"]: e for e in on_report.timeline.events("experiment")}
    assert set(ran) == {
        "init_loss",
        "overfit_one_batch",
        "lr_probe",
        "input_independent",
        "batch_independence",
    }
    assert all(e["verdict"] != "error" for e in ran.values()), ran
    assert not off_report.timeline.events("experiment")
    assert not [f for f in off_report.findings if f.code.startswith("TD7")]


def test_an_experiment_that_raises_is_recorded_not_raised(tmp_path, monkeypatch):
    from traindoctor.experiments import recipe

    def boom(setup):
        raise RuntimeError("planted")

    monkeypatch.setattr(recipe, "_batch_independence", boom)
    report, _ = run_watch(tmp_path, True)
    errors = [e for e in report.timeline.events("experiment") if e["verdict"] == "error"]
    assert [e["name"] for e in errors] == ["batch_independence"]
    assert "planted" in errors[0]["reason"]
    assert not report.internal_errors
    assert any(f.code == "TD705" and "planted" in f.title for f in report.findings)


def test_custom_loss_is_said_to_be_not_replayable(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with experiments.enable(), td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(3):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    (event,) = doc.report.timeline.events("experiment")
    assert event["name"] == "skipped" and "custom code" in event["reason"]
    assert [f.code for f in doc.report.findings if f.code.startswith("TD7")] == ["TD705"]


def test_memory_short_skips_with_the_reason(tmp_path, monkeypatch):
    from traindoctor.experiments import runner

    monkeypatch.setattr(runner, "available_memory", lambda device: 1024)
    report, _ = run_watch(tmp_path, True)
    (event,) = report.timeline.events("experiment")
    assert event["name"] == "skipped" and "memory short" in event["reason"]


def amp_script(watch=None, steps: int = 10):
    """bf16 autocast with a GradScaler whose scale moves (growth_interval 3), a OneCycleLR, and
    clip_grad_norm_ before unscale_ (TD204: its fix trial runs with a GradScaler of its own)."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps + 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
    doc = watch(model, opt, scaler) if watch else None
    seen, step = [], 0
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(xb), yb)
            scaler.scale(loss).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # BUG: still scaled
            scaler.step(opt)
            scaler.update()
            sched.step()
            seen.append(yb.clone())
            step += 1
            if step >= steps:
                break
    opt.zero_grad(set_to_none=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scaler.scale(F.cross_entropy(model(x[:16]), y[:16])).backward()
    return doc, model, opt, seen, scaler, sched


def _amp_run(tmp_path, on: bool, watched: bool):
    docs = []

    def watch(model, opt, scaler):
        docs.append(td.watch(model, opt, scaler, out_dir=tmp_path, console=False))
        return docs[-1]

    with experiments.enable(on):
        if watched:
            _, model, opt, seen, scaler, sched = amp_script(watch)
            report = docs[-1].close()
        else:
            doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False, script="iso-amp")
            with attached(doctor):
                _, model, opt, seen, scaler, sched = amp_script()
            report = doctor.close()
    snap = snapshot(model, opt, seen)
    snap["next_random"] = torch.rand(4)
    # The user's GradScaler (scale, growth tracker) and scheduler (last_epoch, the lrs) too.
    snap["scaler"] = scaler.state_dict()
    snap["sched"] = {k: v for k, v in sched.state_dict().items() if k != "anneal_func"}
    return report, snap


@pytest.mark.parametrize("watched", [True, False], ids=["watch", "zero-code"])
def test_amp_and_schedule_untouched_by_the_trials(watched, tmp_path):
    """The fix trial replays a GradScaler and the lr schedule on its copy: the user's scaler,
    scheduler, params, grads, optimizer state, RNG and loader order are bit-identical."""
    torch.set_num_threads(1)
    off_report, off = _amp_run(tmp_path / "off", False, watched)
    on_report, on = _amp_run(tmp_path / "on", True, watched)
    same(off, on)
    assert not on_report.internal_errors, on_report.internal_errors
    (finding,) = [f for f in on_report.findings if f.code == "TD204"]
    trial = finding.evidence["trial"]
    assert trial["verdict"] in ("fix helps", "fix does not help"), trial["verdict"]
    assert "OneCycleLR" in trial["replay"] and "init_scale 256" in trial["replay"]
    assert all("trial" not in f.evidence for f in off_report.findings)

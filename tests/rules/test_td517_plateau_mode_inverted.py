"""TD517 plateau-mode-inverted: ReduceLROnPlateau given a metric of the other direction.

Rule: src/traindoctor/rules/setup/plateau_mode_inverted.py; facts: the `schedule.plateau`
signal of src/traindoctor/probes/schedule.py. Real runs under `td.watch()`, each a plain loop
validated every 4 steps on a held-out split; the metric passed to `scheduler.step()` varies.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.findings import Severity


def _data(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(640, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    return x[128:], y[128:], x[:128], y[:128]


def _loop(tmp_path, mode, metric, *, steps=80, patience=1, every=4, watched=True, inside=False):
    """metric: 'val_loss', 'val_acc', 'train_loss' (the last batch's), or 'val_loss_tensor'."""
    x, y, xv, yv = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode, patience=patience, factor=0.5)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False) if watched else None
    g = torch.Generator().manual_seed(5)
    for step in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        if step % every != every - 1:
            continue
        model.eval()
        with torch.no_grad():
            out = model(xv)
            if metric == "val_loss":
                value = F.cross_entropy(out, yv).item()
            elif metric == "val_loss_tensor":
                value = F.cross_entropy(out, yv)
            elif metric == "val_acc":
                value = (out.argmax(1) == yv).float().mean().item()
            else:
                value = loss.item()
        model.train()
        if inside and doc is not None:
            with doc.validating(model):
                sched.step(value)
        else:
            sched.step(value)  # STEP
    if doc is not None:
        doc.close()
    return doc, model, opt


def _td517(doc):
    return [f for f in doc.report.findings if f.code == "TD517"]


def test_mode_max_stepped_with_the_validation_loss_warns(tmp_path):
    doc, _, opt = _loop(tmp_path, "max", "val_loss")
    (f,) = _td517(doc)
    assert f.severity is Severity.WARNING
    ev = f.evidence
    assert ev["mode"] == "max" and ev["cuts"] >= 2 and ev["cuts_while_improving"] >= 2
    assert ev["lr"][0] == 0.05 and ev["lr"][1] == opt.param_groups[0]["lr"]
    assert ev["metric"][-1] < ev["metric"][0]  # the loss fell while the lr was cut
    assert "mode='min'" in f.fix
    assert f.where.source and f.where.source.endswith(".py:" + str(_line("# STEP")))


def test_mode_max_stepped_with_the_training_loss_itself(tmp_path):
    doc, _, _ = _loop(tmp_path, "max", "train_loss")
    (f,) = _td517(doc)
    assert f.severity is Severity.WARNING
    assert f.evidence["metric_is_training_loss"] is True
    assert "training loss itself" in f.cause


def test_a_tensor_metric_is_recorded_as_a_float_and_stepped_inside_validating(tmp_path):
    doc, _, _ = _loop(tmp_path, "max", "val_loss_tensor", inside=True)
    records = doc.timeline.series("schedule.plateau")
    assert len(records) == 20
    assert all(type(v) is float for _, r in records for v in r["sched0"])
    assert _td517(doc) and _td517(doc)[0].severity is Severity.WARNING


def test_mode_min_stepped_with_an_accuracy_is_info(tmp_path):
    doc, _, _ = _loop(tmp_path, "min", "val_acc", steps=120)
    found = _td517(doc)
    assert all(f.severity is Severity.INFO for f in found)


def test_healthy_plateau_uses_are_silent(tmp_path):
    for i, (mode, metric) in enumerate(
        [("min", "val_loss"), ("max", "val_acc"), ("min", "train_loss")]
    ):
        doc, _, _ = _loop(tmp_path / str(i), mode, metric)
        assert _td517(doc) == [], (mode, metric, _td517(doc))


def test_silent_with_fewer_than_two_cuts_or_four_steps(tmp_path):
    doc, _, _ = _loop(tmp_path / "a", "max", "val_loss", patience=30)  # never cuts twice
    assert _td517(doc) == []
    doc, _, _ = _loop(tmp_path / "b", "max", "val_loss", steps=12, patience=0)  # 3 steps
    assert _td517(doc) == []


def test_training_is_bit_identical_with_and_without_traindoctor(tmp_path):
    _, watched, opt_w = _loop(tmp_path, "max", "val_loss_tensor", inside=True)
    _, plain, opt_p = _loop(tmp_path, "max", "val_loss_tensor", watched=False)
    for a, b in zip(watched.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt_w.param_groups[0]["lr"] == opt_p.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_p, "max")
    copy.deepcopy(sched)  # the wrapped step() leaves the scheduler copyable


def _line(marker: str) -> int:
    with open(__file__, encoding="utf-8") as fh:
        return next(i for i, text in enumerate(fh, 1) if marker in text and "_line(" not in text)


class _Wrapper(torch.optim.Optimizer):
    """accelerate's AcceleratedOptimizer, as the Hugging Face Trainer builds its scheduler over."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.defaults = optimizer.defaults
        self.state = optimizer.state

    @property
    def param_groups(self):
        return self.optimizer.param_groups


def test_a_scheduler_over_a_wrapper_of_the_watched_optimizer_is_seen(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(_Wrapper(opt), "max", patience=0)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    x = torch.randn(16, 4)
    for _ in range(6):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step(loss.item())
    doc.close()
    records = [r["sched0"] for _, r in doc.timeline.series("schedule.plateau")]
    assert len(records) == 6 and records[1][1:] == [0.1, 0.1 * 0.1]  # the cut, seen


LIGHTNING = """
import torch, torch.nn as nn, torch.nn.functional as F
import lightning as L
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
g = torch.Generator().manual_seed(3)
x = torch.randn(640, 16, generator=g)
y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
train = DataLoader(TensorDataset(x[128:], y[128:]), batch_size=32, shuffle=True)
val = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=64)


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

    def training_step(self, batch, _):
        loss = F.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):
        self.log("val_loss", F.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", patience=1, factor=0.5  # MODE
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}


trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Classifier(), train, val)  # FIT
"""


@pytest.mark.slow
def test_lightning_stepped_plateau_points_at_the_line_that_built_it(tmp_path_factory):
    # Lightning steps the scheduler with the logged val_loss: the step's site was the user's
    # trainer.fit() line; the mode to fix is on the constructor's line in configure_optimizers
    from tests.cli.conftest import run_scripts

    r = run_scripts(tmp_path_factory, {"lightning_plateau": LIGHTNING})["lightning_plateau"]
    assert r.rc == 0, r
    found = [f for f in r.findings()["findings"] if f["code"] == "TD517"]
    assert found and found[0]["severity"] == "warning", r
    lines = LIGHTNING.lstrip("\n").splitlines()
    built = next(i for i, t in enumerate(lines, 1) if "ReduceLROnPlateau(" in t)
    assert found[0]["where"]["source"].endswith(f"train.py:{built}"), found[0]["where"]

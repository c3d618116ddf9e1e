"""FSDP's `ShardedGradScaler` under `td.watch(model, opt)` without `scaler=`.

ShardedGradScaler overrides GradScaler's scale(), unscale_() and update() without calling them,
so observing the GradScaler class alone never saw it: a clip before unscale_ gave no TD204, and
a healthy float16 run was told it had no scaler (TD211). Torch's own subclasses are observed
too now. Run on CPU in a gloo process group of one (ShardedGradScaler's unscale_ all-reduces
its inf flags over the group)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor._patching import patched_targets
from traindoctor.findings import Severity

sharded = pytest.importorskip("torch.distributed.fsdp.sharded_grad_scaler")


@pytest.fixture
def group():
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group of the test session")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(before)


def _loop(tmp_path, *, clip_first: bool, dtype=torch.bfloat16, watch=True, steps=12):
    """The FSDP tutorial's AMP step on a plain model: scale, backward, (unscale_), clip, step,
    update."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = sharded.ShardedGradScaler("cpu")
    doc = td.watch(model, opt, out_dir=tmp_path, console=False) if watch else None
    for i in range(steps):
        xb, yb = x[(i * 16) % 128 :][:16], y[(i * 16) % 128 :][:16]
        with torch.autocast("cpu", dtype=dtype):
            loss = F.cross_entropy(model(xb).float(), yb)
        scaler.scale(loss).backward()
        if not clip_first:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return model, scaler, (doc.close() if doc else None), doc


def _loud(report):
    return [(f.code, f.title) for f in report.findings if f.severity is not Severity.INFO]


def test_clip_before_unscale_with_a_sharded_scaler_is_found(group, tmp_path):
    _, _, report, doc = _loop(tmp_path, clip_first=True)
    assert not report.internal_errors, report.internal_errors
    assert report.findings[0].code == "TD204", _loud(report)
    assert doc.timeline.facts["scaler"] == "ShardedGradScaler"
    # the loss recorded is the loss, not the loss times 65536
    losses = [v for _, vals in doc.timeline.series("loss.backward") for v in vals]
    assert losses and max(losses) < 10, losses[:3]


def test_healthy_float16_run_with_a_sharded_scaler_is_silent(group, tmp_path):
    _, _, report, doc = _loop(tmp_path, clip_first=False, dtype=torch.float16)
    assert not report.internal_errors, report.internal_errors
    assert _loud(report) == []  # no TD211 "float16 without a GradScaler"
    assert [s for s, _ in doc.timeline.series("amp.scale")] == list(range(1, 13))


def test_training_and_the_sharded_scaler_unchanged(group, tmp_path):
    plain, plain_scaler, _, _ = _loop(tmp_path, clip_first=False, watch=False)
    watched, scaler, _, _ = _loop(tmp_path, clip_first=False)
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a, b)
    assert scaler.state_dict() == plain_scaler.state_dict()
    assert not patched_targets()
    for name in ("scale", "unscale_", "update"):  # the class's own methods are back
        assert vars(sharded.ShardedGradScaler)[name].__module__ == sharded.__name__
        assert not hasattr(vars(sharded.ShardedGradScaler)[name], "__wrapped__")


ZERO_CODE = """
import sys
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scaler = ShardedGradScaler("cpu")
x, y = torch.randn(128, 16), torch.randint(0, 4, (128,))
for i in range(12):
    xb, yb = x[(i * 16) % 128:][:16], y[(i * 16) % 128:][:16]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(xb).float(), yb)
    scaler.scale(loss).backward()
    if sys.argv[1] == "fixed":
        scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # CLIP
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_zero_code_finds_the_sharded_scaler(tmp_path):
    from tests.cli.conftest import line_of, run_all, td, write

    jobs = {}
    for arm in ("clip_first", "fixed"):
        write(tmp_path / arm, "train.py", ZERO_CODE)
        jobs[arm] = lambda arm=arm: td(tmp_path / arm, "run", "train.py", arm)
    runs = run_all(jobs)
    bug, fixed = runs["clip_first"], runs["fixed"]
    assert bug.rc in (0, 3) and fixed.rc == 0, (bug, fixed)
    f = bug.findings()["findings"][0]
    assert f["code"] == "TD204", bug
    assert f["where"]["source"] == f"train.py:{line_of(bug.cwd / 'train.py', '# CLIP')}"
    assert [g["code"] for g in fixed.findings()["findings"] if g["severity"] != "info"] == []

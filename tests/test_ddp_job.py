"""A DDP job under torchrun (2 processes, gloo, CPU) runs to the end under traindoctor as it
does plainly: a NaN record on rank 1 at step 10 used to make the autopsy replay the
DDP-wrapped module, a collective the other rank never matched (rank 1 aborted inside gloo,
rank 0 died with 'Connection reset by peer'). Each rank writes its own report for now."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import env, write

TRAIN = """
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DDP(nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
g = torch.Generator().manual_seed(rank)
for step in range(20):
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)
    if rank == 1 and step == 10:
        x[0, 0] = float("nan")  # BAD RECORD
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
print(f"rank {rank} done")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_nan_on_one_rank_does_not_break_the_ddp_job(tmp_path):
    import subprocess

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    write(tmp_path, "train.py", TRAIN)
    cmd = [
        str(torchrun) if torchrun.exists() else "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "traindoctor",
        "run",
        "--out",
        "runs",
        "train.py",
    ]
    p = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "rank 0 done" in out and "rank 1 done" in out, out[-4000:]
    reports = [json.loads(f.read_text()) for f in (tmp_path / "runs").glob("*/findings.json")]
    assert len(reports) == 2, out[-4000:]
    codes = [{f["code"] for f in r["findings"]} for r in reports]
    # The rank that read the NaN record names its input batch.
    assert any("TD203" in c for c in codes), codes

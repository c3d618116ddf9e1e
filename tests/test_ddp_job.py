"""A DDP job under torchrun (2 processes, gloo, CPU) runs to the end under traindoctor as it
does plainly: a NaN record on rank 1 at step 10 used to make the autopsy replay the
DDP-wrapped module, a collective the other rank never matched (rank 1 aborted inside gloo,
rank 0 died with 'Connection reset by peer'). Each rank writes its own report under the job's
run directory (runs/<run id>/ranks/rank<N>/; the merged report: tests/distributed/).

A crash of one rank, or one rank stopping early, ends the job as it does plainly (same exit
statuses, no hang), and nothing traindoctor does calls a torch.distributed collective: the
training scripts count every collective called from traindoctor's own files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import env, write
from tests.distributed._jobs import ended_well

# Counts the collectives called from traindoctor's files (a wrapper on each torch.distributed
# collective that looks at the first caller outside torch), printed at the end of each rank.
COUNT_COLLECTIVES = """
import sys
import torch.distributed as dist
OURS = []
for _name in ("all_reduce", "broadcast", "barrier", "all_gather", "reduce", "gather", "scatter",
              "all_gather_object", "broadcast_object_list", "reduce_scatter", "send", "recv"):
    _fn = getattr(dist, _name, None)
    if _fn is None:
        continue
    def _counted(*a, _fn=_fn, _name=_name, **k):
        f = sys._getframe(1)
        while f is not None and "/torch/" in f.f_code.co_filename:
            f = f.f_back  # torch's own callers (DDP's hooks): the caller is the first after
        if f is not None and "/traindoctor/" in f.f_code.co_filename:
            OURS.append(_name)
        return _fn(*a, **k)
    setattr(dist, _name, _counted)
"""

TRAIN = (
    COUNT_COLLECTIVES
    + """
import torch
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
print(f"rank {rank} done, collectives from traindoctor: {len(OURS)}")
dist.destroy_process_group()
"""
)

# A small DDP model and its optimizer on each rank, collectives counted.
SMALL_DDP = (
    COUNT_COLLECTIVES
    + """
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
"""
)

# Rank 1 raises at step 5; rank 0 is then stuck in its next all-reduce until torchrun tears
# the job down (plainly too): the job fails, and nothing hangs past torchrun's own teardown.
CRASH = (
    SMALL_DDP
    + """
for step in range(12):
    if rank == 1 and step == 5:
        raise RuntimeError("rank 1 fails")
    opt.zero_grad()
    nn.functional.mse_loss(model(torch.randn(16, 8)), torch.randn(16, 1)).backward()
    opt.step()
print(f"rank {rank} done")
"""
)

# Rank 1 trains 6 steps and leaves; rank 0 goes on alone with a local model (no collective).
EARLY = (
    SMALL_DDP
    + """
for step in range(6):
    opt.zero_grad()
    nn.functional.mse_loss(model(torch.randn(16, 8)), torch.randn(16, 1)).backward()
    opt.step()
dist.barrier()
if rank == 0:
    local = model.module
    for step in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(local(torch.randn(16, 8)), torch.randn(16, 1)).backward()
        opt.step()
print(f"rank {rank} done, collectives from traindoctor: {len(OURS)}")
dist.destroy_process_group()
"""
)


def _torchrun(tmp_path, script: str, watched: bool):
    import subprocess

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    write(tmp_path, "train.py", script)
    cmd = [
        str(torchrun) if torchrun.exists() else "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    cmd += ["-m", "traindoctor", "run", "--out", "runs", "train.py"] if watched else ["train.py"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.slow
def test_nan_on_one_rank_does_not_break_the_ddp_job(tmp_path):
    code, out = _torchrun(tmp_path, TRAIN, watched=True)
    assert ended_well(code, out), out[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} done, collectives from traindoctor: 0" in out, out[-4000:]
    reports = [
        json.loads(f.read_text()) for f in (tmp_path / "runs").glob("*/ranks/rank*/findings.json")
    ]
    assert len(reports) == 2, out[-4000:]
    codes = [{f["code"] for f in r["findings"]} for r in reports]
    # The rank that read the NaN record names its input batch.
    assert any("TD203" in c for c in codes), codes


@pytest.mark.slow
def test_a_crashing_rank_ends_the_job_as_it_does_plainly(tmp_path):
    plain_code, plain_out = _torchrun(tmp_path / "plain", CRASH, watched=False)
    code, out = _torchrun(tmp_path / "watched", CRASH, watched=True)
    assert plain_code != 0 and code != 0, out[-4000:]
    assert "rank 1 fails" in out, out[-4000:]
    assert "rank 1 done" not in out and "rank 1 done" not in plain_out
    # The rank that crashed still wrote its report, with the user's exception as its end.
    reports = [
        json.loads(f.read_text())
        for f in (tmp_path / "watched" / "runs").glob("*/ranks/rank*/findings.json")
    ]
    assert reports, out[-4000:]


@pytest.mark.slow
def test_one_rank_stopping_early_leaves_the_other_running(tmp_path):
    code, out = _torchrun(tmp_path, EARLY, watched=True)
    assert ended_well(code, out), out[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} done, collectives from traindoctor: 0" in out, out[-4000:]
    reports = [
        json.loads(f.read_text()) for f in (tmp_path / "runs").glob("*/ranks/rank*/findings.json")
    ]
    assert len(reports) == 2, out[-4000:]
    steps = sorted(r.get("steps") for r in reports)
    assert steps == [6, 26], steps

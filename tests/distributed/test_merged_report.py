"""A torchrun job (2 processes, gloo, CPU) under traindoctor gets one run directory and one
merged report: findings.json with `world_size` and a `ranks` list (closed/killed/missing, steps,
how each ended), each finding with the ranks that showed it, and each rank's own report under
ranks/rank<N>/. Launched as users do: `torchrun -m traindoctor run train.py` and `td.watch` in a
DDP script. No collective is called from traindoctor's files (the scripts count them)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli.conftest import TRAINDOCTOR, env, write
from tests.distributed._jobs import ended_well
from tests.test_ddp_job import COUNT_COLLECTIVES

pytestmark = pytest.mark.slow

DDP_SETUP = (
    COUNT_COLLECTIVES
    + """
import os, signal
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
g = torch.Generator().manual_seed(rank)

def train_step(step):
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    if BAD_LABELS_ON_RANK1 and rank == 1:
        y = y * 0  # BAD LABELS: rank 1's shard holds one class only
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss
"""
)

HEALTHY = (
    "BAD_LABELS_ON_RANK1 = False\n"
    + DDP_SETUP
    + """
for step in range(12):
    train_step(step)
print(f"rank {rank} done, collectives from traindoctor: {len(OURS)}")
dist.destroy_process_group()
"""
)

# td.watch inside the script, as the README shows; rank 1's labels are all one class. Rank 1
# closes only once rank 0 has written the job's report (after waiting 0.5 s for rank 1,
# TRAINDOCTOR_MERGE_WAIT) with rank 1 still running; rank 1, the last to close, completes it.
WATCHED_ONE_RANK_BUG = (
    "BAD_LABELS_ON_RANK1 = True\n"
    + DDP_SETUP
    + """
import traindoctor as td
with td.watch(model, opt, out_dir="runs", console=False) as doc:
    for step in range(12):
        doc.log(loss=train_step(step))
    if rank == 1:
        import glob, time
        deadline = time.monotonic() + 60
        while not glob.glob("runs/*/findings.json") and time.monotonic() < deadline:
            time.sleep(0.05)
job = doc.job_report
print(f"rank {rank} done, collectives from traindoctor: {len(OURS)}")
print(f"rank {rank} own report: {doc.report.run_dir}, job report written: {job is not None}")
print(f"rank {rank} saw ranks: {[r['status'] for r in job.ranks] if job else None}")
dist.destroy_process_group()
"""
)

# Rank 1 kills itself (SIGKILL) in step 8; rank 0's next all-reduce then fails (gloo) and
# torchrun tears the job down, as without traindoctor.
KILLED = (
    "BAD_LABELS_ON_RANK1 = False\n"
    + DDP_SETUP
    + """
for step in range(30):
    if rank == 1 and step == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    train_step(step)
print(f"rank {rank} done")
"""
)

# name: (script, traindoctor run's options, or None for the script alone, extra environment)
JOBS = {
    "healthy": (HEALTHY, ["--json"], {}),
    "watched": (WATCHED_ONE_RANK_BUG, None, {"TRAINDOCTOR_MERGE_WAIT": "0.5"}),
    "killed": (KILLED, [], {}),
    "killed_plain": (KILLED, None, {}),
}


def _torchrun(folder: Path, script: str, run_options: list[str] | None, extra: dict):
    torchrun = Path(sys.executable).with_name("torchrun")
    write(folder, "train.py", script)
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2"]
    if run_options is None:
        cmd += ["train.py"]
    else:
        cmd += ["-m", "traindoctor", "run", *run_options, "--out", "runs", "train.py"]
    e = {**env(), "TRAINDOCTOR_PLOTS": "0", **extra}
    p = subprocess.run(cmd, cwd=folder, env=e, capture_output=True, text=True, timeout=240)
    return p.returncode, p.stdout + p.stderr, p.stdout


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    if not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun is not installed")
    root = tmp_path_factory.mktemp("jobs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_torchrun, root / name, *job) for name, job in JOBS.items()}
        return {name: (root / name, *f.result()) for name, f in futures.items()}


def _job(folder: Path) -> tuple[Path, dict]:
    job_dirs = [p.parent for p in (folder / "runs").glob("*/findings.json")]
    assert len(job_dirs) == 1, sorted((folder / "runs").rglob("*"))
    return job_dirs[0], json.loads((job_dirs[0] / "findings.json").read_text())


def test_a_healthy_job_has_one_merged_report(jobs):
    folder, code, out, stdout = jobs["healthy"]
    assert ended_well(code, out), out[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} done, collectives from traindoctor: 0" in out, out[-4000:]
    job_dir, data = _job(folder)
    assert data["world_size"] == 2
    assert [(r["rank"], r["status"], r["steps"]) for r in data["ranks"]] == [
        (0, "closed", 12),
        (1, "closed", 12),
    ]
    assert data["run"]["ended"] == "normal"
    assert data["findings"], data  # TD502's audit at least, seen by both ranks
    assert all(f["ranks"] == [0, 1] for f in data["findings"]), data["findings"]
    for rank in (0, 1):
        own = json.loads((job_dir / "ranks" / f"rank{rank}" / "findings.json").read_text())
        assert (own["rank"], own["world_size"]) == (rank, 2)
        assert "ranks" not in own
        assert (job_dir / "ranks" / f"rank{rank}" / "timeline.jsonl").is_file()
    assert "## Ranks (world size 2)" in (job_dir / "report.md").read_text()
    assert "world size 2" in (job_dir / "report.html").read_text()
    # --json: stdout is the job's findings.json alone (rank 0's; the other ranks print none).
    assert json.loads(stdout) == data


def test_a_finding_on_one_rank_names_that_rank(jobs):
    folder, code, out, _ = jobs["watched"]
    assert ended_well(code, out), out[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} done, collectives from traindoctor: 0" in out, out[-4000:]
    assert "rank 0 own report: runs/" in out and "/ranks/rank0, job report written: True" in out
    job_dir, data = _job(folder)
    ranks = {f["code"]: f["ranks"] for f in data["findings"]}
    assert ranks.get("TD511") == [1], data["findings"]
    assert ranks.get("TD502") == [0, 1], data["findings"]
    md = (job_dir / "report.md").read_text()
    assert "- **Ranks:** 1\n" in md
    # Rank 0 merged at its close with rank 1 still running; rank 1, last, completed the report.
    assert "rank 0 saw ranks: ['closed', 'running']" in out, out[-4000:]
    assert "rank 1 saw ranks: ['closed', 'closed']" in out, out[-4000:]
    assert [r["status"] for r in data["ranks"]] == ["closed", "closed"]


def test_a_killed_rank_is_reported_and_the_job_exits_as_plainly(jobs):
    _, plain_code, _, _ = jobs["killed_plain"]
    folder, code, out, _ = jobs["killed"]
    assert code == plain_code != 0, (code, plain_code, out[-4000:])
    job_dir, data = _job(folder)
    by_rank = {r["rank"]: r for r in data["ranks"]}
    assert by_rank[1]["status"] == "killed", data["ranks"]
    assert by_rank[1]["exit"]["ended"] == "killed"
    assert by_rank[0]["status"] == "closed", data["ranks"]
    assert by_rank[0]["exit"]["ended"] in ("exception", "interrupted")
    assert data["run"]["ended"] == "abnormal" and 1 in data["run"]["abnormal_ranks"]
    assert "rank 1 never closed (killed" in (job_dir / "report.md").read_text()
    assert not (job_dir / "ranks" / "rank1" / "findings.json").exists()

    # `traindoctor report` merges again, re-diagnosing the killed rank from its timeline.
    p = subprocess.run(
        [*TRAINDOCTOR, "report", "--json", str(job_dir)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    again = json.loads(p.stdout)
    assert [r["status"] for r in again["ranks"]] == ["closed", "killed"]
    assert again["ranks"][1]["steps"] >= 1
    assert {f["code"]: f["ranks"] for f in again["findings"]}.get("TD502") == [0, 1]
    assert (job_dir / "ranks" / "rank1" / "report.md").is_file()
    assert json.loads((job_dir / "findings.json").read_text())["ranks"] == again["ranks"]


def test_report_of_a_rank_folder_is_that_rank_alone(jobs):
    folder = jobs["healthy"][0]
    job_dir, _ = _job(folder)
    p = subprocess.run(
        [*TRAINDOCTOR, "report", "--json", str(job_dir / "ranks" / "rank1")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["rank"] == 1

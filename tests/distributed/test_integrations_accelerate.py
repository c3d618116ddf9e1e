"""A plain Accelerate loop in a 2-process CPU job (gloo), watched by
`traindoctor.accelerate.watch` and by `accelerate launch -m traindoctor run train.py`: one
merged report for the job, both ranks closed, parameters bit-identical to the plain job, no
collective from traindoctor.

How accelerate starts 2 CPU processes: `accelerate launch --cpu --num_processes 2` starts ONE
process (accelerate's multi-CPU launch goes through mpirun, with --mpirun_hostfile);
`--multi_gpu --num_processes 2` goes through torchrun, and `Accelerator(cpu=True)` then makes it
a MULTI_CPU job on gloo, what these tests launch. `-m` (run a module) is supported."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli.conftest import env, write
from tests.test_ddp_job import COUNT_COLLECTIVES

pytest.importorskip("accelerate")
pytestmark = pytest.mark.slow

SCRIPT = (
    COUNT_COLLECTIVES
    + """
import sys
import torch
import torch.nn as nn
from accelerate import Accelerator
how = sys.argv[1]  # watch (traindoctor.accelerate.watch), zero (under traindoctor run), plain
accelerator = Accelerator(cpu=True)
assert accelerator.num_processes == 2, accelerator.distributed_type
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
data = torch.utils.data.TensorDataset(x, x[:, :3].argmax(1))
loader = torch.utils.data.DataLoader(data, batch_size=16)
model, opt, loader = accelerator.prepare(model, opt, loader)
doc = None
if how == "watch":
    import traindoctor.accelerate as tda
    doc = tda.watch(accelerator, model, opt, out_dir="runs", console=False)
for step, (xb, yb) in enumerate(loader):
    if step == 6:
        break
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    accelerator.backward(loss)
    opt.step()
    if doc is not None:
        doc.log(loss=loss)
if doc is not None:
    doc.close()
rank = accelerator.process_index
torch.save(accelerator.unwrap_model(model).state_dict(), f"params_{how}_{rank}.pt")
print(f"rank {rank} done, collectives from traindoctor: {len(OURS)}", flush=True)
"""
)

HOWS = ("watch", "zero", "plain")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, how: str) -> tuple[Path, int, str]:
    folder = root / how
    write(folder, "train.py", SCRIPT)
    cmd = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--multi_gpu",
        "--num_processes", "2",
        "--num_machines", "1",
        "--mixed_precision", "no",
        "--dynamo_backend", "no",
        "--num_cpu_threads_per_process", "1",
        "--main_process_port", str(_free_port()),  # its default, 29500, is shared by all
    ]  # fmt: skip
    if how == "zero":
        cmd += ["-m", "traindoctor", "run", "--out", "runs"]
    e = {**env(), "TRAINDOCTOR_PLOTS": "0", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [*cmd, "train.py", how], cwd=folder, env=e, capture_output=True, text=True, timeout=300
    )
    return folder, p.returncode, p.stdout + p.stderr


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    if not Path(sys.executable).with_name("accelerate").exists():
        pytest.skip("accelerate's launcher is not installed")
    root = tmp_path_factory.mktemp("accelerate_ddp")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {how: pool.submit(_launch, root, how) for how in HOWS}
        return {how: f.result() for how, f in futures.items()}


@pytest.mark.parametrize("how", ["watch", "zero"])
def test_one_merged_report_for_the_job(jobs, how):
    folder, code, out = jobs[how]
    assert code == 0, out[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} done, collectives from traindoctor: 0" in out, out[-4000:]
    found = [p.parent for p in (folder / "runs").glob("*/findings.json")]
    assert len(found) == 1, sorted((folder / "runs").rglob("*"))
    data = json.loads((found[0] / "findings.json").read_text())
    assert data["world_size"] == 2
    assert [(r["rank"], r["status"], r["steps"]) for r in data["ranks"]] == [
        (0, "closed", 6),
        (1, "closed", 6),
    ]
    assert data["run"]["ended"] == "normal"
    assert all(f["ranks"] == [0, 1] for f in data["findings"]), data["findings"]
    assert {f["severity"] for f in data["findings"]} <= {"info"}, data["findings"]
    for rank in (0, 1):
        own = json.loads((found[0] / "ranks" / f"rank{rank}" / "findings.json").read_text())
        assert not own["internal_errors"], own["internal_errors"]


@pytest.mark.parametrize("how", ["watch", "zero"])
def test_parameters_bit_identical_to_the_plain_job(jobs, how):
    import torch

    assert jobs["plain"][1] == 0, jobs["plain"][2][-4000:]
    for rank in (0, 1):
        watched = torch.load(jobs[how][0] / f"params_{how}_{rank}.pt")
        plain = torch.load(jobs["plain"][0] / f"params_plain_{rank}.pt")
        assert watched.keys() == plain.keys()
        assert all(torch.equal(watched[k], plain[k]) for k in plain), (how, rank)

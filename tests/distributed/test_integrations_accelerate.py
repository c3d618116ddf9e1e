"""A plain Accelerate loop in a 2-process CPU job (gloo), watched by
`traindoctor.accelerate.watch` and by `accelerate launch -m traindoctor run train.py`: one
merged report for the job, both ranks closed, parameters bit-identical to the plain job, no
collective from traindoctor.

How accelerate starts 2 CPU processes: `accelerate launch --cpu --num_processes 2` starts ONE
process (accelerate's multi-CPU launch goes through mpirun, with --mpirun_hostfile);
`--multi_gpu --num_processes 2` goes through torchrun, and `Accelerator(cpu=True)` then makes it
a MULTI_CPU job on gloo, what these tests launch. `-m` (run a module) is supported."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.distributed._jobs import (
    Job,
    assert_params_as_plain,
    ended_well,
    job_report,
    launch,
    rank_report,
    side_by_side,
)
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


def _launch(root: Path, how: str) -> Job:
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
    return launch(root, how, SCRIPT, cmd, {"HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    if not Path(sys.executable).with_name("accelerate").exists():
        pytest.skip("accelerate's launcher is not installed")
    return side_by_side(tmp_path_factory.mktemp("accelerate_ddp"), HOWS, _launch)


@pytest.mark.parametrize("how", ["watch", "zero"])
def test_one_merged_report_for_the_job(jobs, how):
    folder, code, out = jobs[how]
    assert ended_well(code, out), out[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} done, collectives from traindoctor: 0" in out, out[-4000:]
    job_dir, data = job_report(folder)
    assert data["world_size"] == 2
    assert [(r["rank"], r["status"], r["steps"]) for r in data["ranks"]] == [
        (0, "closed", 6),
        (1, "closed", 6),
    ]
    assert data["run"]["ended"] == "normal"
    assert all(f["ranks"] == [0, 1] for f in data["findings"]), data["findings"]
    assert {f["severity"] for f in data["findings"]} <= {"info"}, data["findings"]
    for rank in (0, 1):
        own = rank_report(job_dir, rank)
        assert not own["internal_errors"], own["internal_errors"]


@pytest.mark.parametrize("how", ["watch", "zero"])
def test_parameters_bit_identical_to_the_plain_job(jobs, how):
    assert_params_as_plain(jobs, how)

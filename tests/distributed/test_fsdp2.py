"""FSDP2 (`torch.distributed.fsdp.fully_shard`) on CPU with gloo, 2 ranks under torchrun: works in
torch 2.13. Parameters, gradients and the norms computed from them are DTensors (each rank holds
a shard); traindoctor reads each rank's own shard (`to_local()`, distributed/dtensor.py), so it
neither fails (a DTensor norm stacked with plain tensors: every read-back of the step had been
lost) nor all-reduces (stacking DTensor norms redistributes them: one all_reduce per step had
come from traindoctor). Watched by td.watch and by `torchrun -m traindoctor run`: the run
completes with parameters bit-identical to the plain job, no internal error, no collective
from traindoctor (DTensor's functional collectives counted too), parameter names as the module
names them and the audit (TD502) counting the whole model, and nothing but the audit reported
on a healthy run; a NaN on rank 1 is reported (TD201 on rank 1) without a collective or a
hang."""

from __future__ import annotations

import json
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

pytestmark = pytest.mark.slow

# What FSDP2 and DTensor call as well: c10d's tensor collectives and the functional ones.
COUNT_MORE = """
import torch.distributed._functional_collectives as _funcol
for _owner, _names in (
    (dist, ("all_gather_into_tensor", "reduce_scatter_tensor", "all_to_all_single")),
    (_funcol, ("all_reduce", "all_gather_tensor", "reduce_scatter_tensor", "all_to_all_single",
               "broadcast", "all_reduce_coalesced", "all_gather_into_tensor_coalesced")),
):
    for _name in _names:
        _fn = getattr(_owner, _name, None)
        if _fn is None:
            continue
        def _counted(*a, _fn=_fn, _name=_name, **k):
            f = sys._getframe(1)
            while f is not None and "/torch/" in f.f_code.co_filename:
                f = f.f_back
            if f is not None and "/traindoctor/" in f.f_code.co_filename:
                OURS.append(_name)
            return _fn(*a, **k)
        setattr(_owner, _name, _counted)
"""

SCRIPT = (
    COUNT_COLLECTIVES
    + COUNT_MORE
    + """
import torch
import torch.nn as nn
from torch.distributed.fsdp import fully_shard
how = sys.argv[1]  # watch (td.watch), zero (under traindoctor run), plain; nan: watch + a NaN
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
)
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer)
fully_shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(rank)
doc = None
if how in ("watch", "nan"):
    import traindoctor as td
    doc = td.watch(model, opt, out_dir="runs", console=False)
for step in range(25):
    x = torch.randn(32, 8, generator=g)
    if how == "nan" and rank == 1 and step == 9:
        x[0, 0] = float("nan")  # BAD RECORD on rank 1: the job's parameters all turn NaN
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), x[:, :3].argmax(1))
    loss.backward()
    opt.step()
    if doc is not None:
        doc.log(loss=loss)
if doc is not None:
    doc.close()
kinds = sorted({type(p).__name__ for p in model.parameters()})
full = {k: v.full_tensor() for k, v in model.state_dict().items()}  # the script's collective
torch.save(full, f"params_{how}_{rank}.pt")
print(f"rank {rank} done, parameters {kinds}, collectives from traindoctor: {len(OURS)}")
dist.destroy_process_group()
"""
)

HOWS = ("watch", "zero", "plain", "nan")


def _torchrun(root: Path, how: str) -> Job:
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    if how == "zero":
        cmd += ["-m", "traindoctor", "run", "--out", "runs"]
    return launch(root, how, SCRIPT, cmd)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    if not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun is not installed")
    pytest.importorskip("torch.distributed.fsdp").fully_shard  # noqa: B018
    return side_by_side(tmp_path_factory.mktemp("fsdp2"), HOWS, _torchrun, workers=4)


@pytest.mark.parametrize("how", ["watch", "zero"])
def test_an_fsdp2_job_is_watched_without_a_collective(jobs, how):
    folder, code, out = jobs[how]
    assert ended_well(code, out), out[-4000:]
    for rank in (0, 1):
        line = f"rank {rank} done, parameters ['DTensor'], collectives from traindoctor: 0"
        assert line in out, out[-4000:]
    job_dir, data = job_report(folder)
    assert [(r["rank"], r["status"], r["steps"]) for r in data["ranks"]] == [
        (0, "closed", 25),
        (1, "closed", 25),
    ]
    # A healthy run: the audit alone, on both ranks, counting the whole model (not a shard).
    assert [(f["code"], f["ranks"]) for f in data["findings"]] == [("TD502", [0, 1])]
    assert data["findings"][0]["evidence"]["total"]["params"] == 8 * 32 + 32 + 32 * 32 + 32 + 99
    for rank in (0, 1):
        rank_dir = job_dir / "ranks" / f"rank{rank}"
        own = json.loads((rank_dir / "findings.json").read_text())
        assert not own["internal_errors"], own["internal_errors"]
        facts = [json.loads(line) for line in (rank_dir / "timeline.jsonl").open()]
        params = next(r["value"] for r in facts if r.get("key") == "params")
        assert sorted(params) == [f"{i}.{k}" for i in (0, 2, 4) for k in ("bias", "weight")]
        assert params["2.weight"]["shape"] == [32, 32]  # the parameter's, not the shard's
        # Gradient norms are read on every rank (its own shard's).
        steps = [r for r in facts if r.get("type") == "step" and r.get("step") == 1]
        assert any("grads.norm" in json.dumps(r) for r in steps)


@pytest.mark.parametrize("how", ["watch", "zero"])
def test_parameters_bit_identical_to_the_plain_job(jobs, how):
    assert_params_as_plain(jobs, how)


def test_a_nan_on_one_rank_is_reported_without_a_collective_or_a_hang(jobs):
    """The NaN's autopsy (which replays modules on a bad step) must not run an FSDP module's
    forward again: that would all-gather its parameters on one rank only."""
    folder, code, out = jobs["nan"]
    assert ended_well(code, out), out[-4000:]
    for rank in (0, 1):
        line = f"rank {rank} done, parameters ['DTensor'], collectives from traindoctor: 0"
        assert line in out, out[-4000:]
    job_dir, data = job_report(folder)
    assert [r["status"] for r in data["ranks"]] == ["closed", "closed"]
    assert [1] in [f["ranks"] for f in data["findings"] if f["code"] == "TD201"], data["findings"]
    for rank in (0, 1):
        own = rank_report(job_dir, rank)
        assert not own["internal_errors"], own["internal_errors"]

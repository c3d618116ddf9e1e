"""The cross-rank rules (TD601-TD609) on real 2-rank torchrun jobs (gloo, CPU):
every buggy scenario of src/traindoctor/scenarios/distributed/ gets its rule first in the job's
merged findings.json, naming the ranks; every healthy twin gets no warning and no error (DDP
with BatchNorm and broadcast buffers, a DistributedSampler with set_epoch, ranks on different
data). The rules themselves: tests/rules/test_td60*.py on hand-built job timelines.

Also: traindoctor adds no collective (the ranks' scripts count them) and the trained
parameters are bit-identical with and without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.distributed._jobs import GLOO_TEARDOWN_ABORT
from tests.test_ddp_job import COUNT_COLLECTIVES
from traindoctor.scenarios import job_scenarios
from traindoctor.scenarios.distributed._job import run_job

pytestmark = pytest.mark.slow

JOBS = job_scenarios()  # (module, Scenario)
BUGGY = [(m, s) for m, s in JOBS if not s.healthy]
HEALTHY = [(m, s) for m, s in JOBS if s.healthy]
# Also launched as `torchrun -m traindoctor run ...` (zero-code: the script unchanged).
ZERO_CODE = ("ddp_forward_bypasses_wrapper", "ddp_training_loop_healthy")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")

    def one(item):
        module, scenario, watch = item
        key = scenario.name if watch else f"{scenario.name}@zero-code"
        return key, run_job(module, scenario.name, root / key, watch=watch)

    items = [(m, s, True) for m, s in JOBS]
    items += [(m, s, False) for m, s in JOBS if s.name in ZERO_CODE]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, items))


def _ours(errors) -> list:
    """Internal errors of the cross-rank machinery (the probe, the fold, the TD6xx rules)."""
    mine = ("probe ranks", "job timeline", "rule TD6")
    return [e for e in errors or [] if str(e.get("where", "")).startswith(mine)]


def _describe(data) -> str:
    return "\n".join(
        f"{f['code']} {f['severity']} ranks={f.get('ranks')}: {f['title']}"
        for f in (data or {}).get("findings", [])
    )


def _modes(items):
    return [
        pytest.param(s, mode, id=f"{s.name}-{mode}")
        for _, s in items
        for mode in ("watch", "zero-code")
        if mode == "watch" or s.name in ZERO_CODE
    ]


def _result(results, scenario, mode):
    return results[scenario.name if mode == "watch" else f"{scenario.name}@zero-code"]


@pytest.mark.parametrize(("scenario", "mode"), _modes(BUGGY))
def test_buggy_job_gets_its_cross_rank_rule_first(results, scenario, mode):
    data, output = _result(results, scenario, mode)
    assert data is not None, output
    assert data["world_size"] == 2 and [r["status"] for r in data["ranks"]] == ["closed"] * 2
    assert not _ours(data["internal_errors"]), data["internal_errors"]
    top = data["findings"][0]
    assert top["code"] == scenario.top, _describe(data)
    assert top["ranks"], top
    where = scenario.where
    if "source" in where:
        assert where["source"] in (top["where"].get("source") or ""), top["where"]
    if "params_prefix" in where:
        params = top["where"].get("params") or []
        assert params and all(p.startswith(where["params_prefix"]) for p in params), top["where"]


@pytest.mark.parametrize(("scenario", "mode"), _modes(HEALTHY))
def test_healthy_twin_is_silent(results, scenario, mode):
    data, output = _result(results, scenario, mode)
    assert data is not None, output
    assert not _ours(data["internal_errors"]), data["internal_errors"]
    flagged = [f for f in data["findings"] if f["severity"] in ("error", "warning")]
    assert not flagged, _describe(data)


def test_td602_names_the_rank_the_step_and_the_batch(results):
    data, _ = results["ddp_nan_record_on_rank1"]
    f = data["findings"][0]
    assert f["code"] == "TD602" and f["step"] == 10
    assert f["evidence"]["origin_ranks"] == [1]
    assert f["evidence"]["batch"]["nonfinite_inputs"] == ["in0"]
    assert f["evidence"]["batch"]["nonfinite_samples"] == [3]


def test_td601_says_why_buffers_alone_drift(results):
    data, _ = results["ddp_broadcast_buffers_off"]
    f = data["findings"][0]
    assert f["code"] == "TD601" and f["severity"] == "warning"
    assert f["evidence"]["kind"] == "buffers" and "broadcast_buffers=False" in f["cause"]


def test_td606_names_the_micro_batch_and_the_drift(results):
    data, _ = results["ddp_no_sync_on_the_step_micro_batch"]
    f = data["findings"][0]
    assert f["code"] == "TD606" and f["step"] == 1 and f["evidence"]["drift_step"] == 2
    assert f["evidence"]["unsynced_steps"] == {"0": 12, "1": 12}


def test_td606_accumulation_without_no_sync_is_only_info(results):
    data, _ = results["ddp_accumulation_without_no_sync"]
    found = [f for f in data["findings"] if f["code"] == "TD606"]
    assert [f["severity"] for f in found] == ["info"], _describe(data)
    assert found[0]["evidence"]["synced_backwards_per_step"] == [2]


def test_td607_names_the_shared_path_and_the_steps(results):
    data, _ = results["ddp_checkpoint_saved_by_every_rank"]
    f = data["findings"][0]
    assert f["evidence"]["path"].endswith("td607_checkpoint.pt")
    assert f["evidence"]["same_steps"] == [4, 8, 12] and f["ranks"] == [0, 1]


def test_td608_names_the_rank_the_collective_and_how_the_job_ended(results):
    data, _ = results["ddp_all_reduce_on_rank0_only"]
    f = data["findings"][0]
    assert f["evidence"]["called_by"] == [0] and f["evidence"]["not_called_by"] == [1]
    assert f["evidence"]["collective"] == "all_reduce" and f["step"] == 8
    assert data["run"]["ended"] == "abnormal" and data["run"]["abnormal_ranks"] == [0]


def test_td609_names_the_metric_and_each_ranks_value(results):
    data, _ = results["ddp_val_loss_on_own_shard"]
    f = data["findings"][0]
    ev = f["evidence"]
    assert ev["metric"] == "loss" and ev["metrics"] == ["loss", "val_acc"]
    assert ev["validations"] == 2 and sorted(ev["values"]) == ["0", "1"]
    assert ev["values"]["0"] != ev["values"]["1"] and f["ranks"] == [0, 1]


# One rank of the healthy BatchNorm job, its collectives counted and its trained parameters
# hashed, watched or not.
RANK_SCRIPT = (
    COUNT_COLLECTIVES
    + """
import hashlib, os
import torch
from traindoctor.scenarios.distributed.td601_ddp_replicas_drift import SCENARIOS
from traindoctor.scenarios.distributed._job import main
model = main(SCENARIOS, ["--scenario", "ddp_in_sync"] + sys.argv[1:])
def digest(items):
    h = hashlib.sha256()
    for k, v in sorted(items):
        h.update(k.encode()); h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()
rank = int(os.environ["RANK"])
with open(f"result.rank{rank}", "w") as fh:  # one file a rank: stdout lines interleave
    fh.write(f"{rank} {digest(model.named_parameters())} {digest(model.state_dict().items())} "
             f"{len(OURS)}")
"""
)


def test_no_collective_and_the_same_parameters_with_and_without_traindoctor(tmp_path):
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    out = {}
    for label, extra in (("plain", []), ("watched", ["--watch", str(tmp_path / "runs")])):
        for r in (0, 1):
            (tmp_path / f"result.rank{r}").unlink(missing_ok=True)
        p = subprocess.run(
            [str(torchrun), "--standalone", "--nproc_per_node", "2", "rank.py", *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "OMP_NUM_THREADS": "1", "TRAINDOCTOR_PLOTS": "0"},
        )
        written = all((tmp_path / f"result.rank{r}").is_file() for r in (0, 1))
        # A rank sometimes aborts in gloo's teardown after its work is done, with or without
        # traindoctor (_jobs.ended_well; here the result files say the work is done).
        teardown = written and GLOO_TEARDOWN_ABORT in p.stderr
        assert p.returncode == 0 or teardown, f"{label}: {p.stdout}{p.stderr}"
        out[label] = [(tmp_path / f"result.rank{r}").read_text().split() for r in (0, 1)]
    # Each rank's parameters and buffers, bit for bit, with and without traindoctor.
    assert [ln[:3] for ln in out["plain"]] == [ln[:3] for ln in out["watched"]]
    # The replicas' parameters agree (their BatchNorm statistics may not: each rank's last
    # forward updated them with its own batch).
    assert len({ln[1] for ln in out["plain"]}) == 1
    assert [ln[3] for ln in out["watched"]] == ["0", "0"]  # collectives from traindoctor
    job = json.loads(next((tmp_path / "runs").glob("*/findings.json")).read_text())
    assert not [f for f in job["findings"] if f["code"].startswith("TD6")]


# The module inside the DDP wrapper handed to td.watch (as the framework integrations do): the
# probe finds its wrapper at the first training forward (DDP's active module) and judges it.
UNWRAPPED = """
import torch.distributed as dist
import traindoctor as td
from traindoctor.scenarios.distributed.td601_ddp_replicas_drift import train
dist.init_process_group("gloo")
docs = []
def watch(model, opt):
    docs.append(td.watch(model.module, opt, out_dir="runs", console=False))
    return docs[-1]
train(steps=24, watch=watch, bug="bypass")
docs[0].close()
dist.destroy_process_group()
"""


def test_a_watched_module_inside_ddp_is_judged_with_its_wrapper(tmp_path):
    (tmp_path / "rank.py").write_text(UNWRAPPED)
    torchrun = Path(sys.executable).with_name("torchrun")
    p = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "rank.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TRAINDOCTOR_PLOTS": "0"},
    )
    assert p.returncode == 0, p.stdout + p.stderr
    job = json.loads(next((tmp_path / "runs").glob("*/findings.json")).read_text())
    top = job["findings"][0]
    assert top["code"] == "TD601", _describe(job)
    assert "td601_ddp_replicas_drift.py" in top["where"]["source"]
    assert all(not p.startswith("module.") for p in top["where"]["params"])


# Lightning's strategy="ddp" with the callback: the LightningModule inside Lightning's DDP is
# found in memory at attach (its own forward is never the wrapper's) and fingerprinted when
# each fingerprint step opens. BatchNorm, healthy: silent; a write to a weight on rank 1: TD601.
LIGHTNING = """import logging, sys, warnings
warnings.filterwarnings("ignore")
import torch
import lightning.pytorch as L
import traindoctor.lightning as tdl
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
BUG = sys.argv[1] == "bug"

class Lit(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        if BUG and self.global_rank == 1 and batch_idx == 2:
            with torch.no_grad():
                self.net[0].weight.mul_(0.9)  # BUG: a local write on one rank
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

g = torch.Generator().manual_seed(0)
x = torch.randn(512, 8, generator=g)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :3].argmax(1)), batch_size=16)
torch.manual_seed(0)
trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=16, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    callbacks=[tdl.TraindoctorCallback(out_dir=f"runs_{sys.argv[1]}", console=False)])
trainer.fit(Lit(), loader)
"""


def test_lightning_ddp_replicas_are_compared(tmp_path):
    pytest.importorskip("lightning.pytorch")
    (tmp_path / "train.py").write_text(LIGHTNING)

    def fit(how):
        return subprocess.run(
            [sys.executable, "train.py", how],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "OMP_NUM_THREADS": "1", "TRAINDOCTOR_PLOTS": "0"},
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(("ok", "bug"), pool.map(fit, ("ok", "bug")), strict=True))
    jobs = {}
    for how, p in done.items():
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        jobs[how] = json.loads(next((tmp_path / f"runs_{how}").glob("*/findings.json")).read_text())
    assert not [f for f in jobs["ok"]["findings"] if f["code"].startswith("TD6")], _describe(
        jobs["ok"]
    )
    top = jobs["bug"]["findings"][0]
    assert top["code"] == "TD601" and top["ranks"] == [0, 1], _describe(jobs["bug"])
    assert top["where"]["params"] == ["net.0.weight"]

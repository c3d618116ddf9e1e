"""A Hugging Face `Trainer` under `torchrun --nproc_per_node 2` (CPU, gloo; a tiny GPT-2 built
from a local config, `report_to=[]`, `use_cpu=True`, nothing downloaded), watched by the
one-line callback and by `torchrun -m traindoctor run`: one merged report for the job, both
ranks closed, parameters bit-identical to the plain job, no collective from traindoctor."""

from __future__ import annotations

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

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

SCRIPT = (
    COUNT_COLLECTIVES
    + """
import os, sys, warnings
warnings.filterwarnings("ignore")
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging
hf_logging.set_verbosity_error()
how = sys.argv[1]  # callback, zero (under traindoctor run), plain

class Sequences(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = (torch.randint(0, 64, (n, 1), generator=g) + torch.arange(16)) % 64
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}

torch.manual_seed(0)
config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
model = GPT2LMHeadModel(config)
args = TrainingArguments(
    output_dir="out", max_steps=6, per_device_train_batch_size=8, learning_rate=1e-3,
    report_to=[], use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True,
    seed=0, data_seed=0,
)
callbacks = []
if how == "callback":
    from traindoctor.transformers import TraindoctorCallback
    callbacks = [TraindoctorCallback(out_dir="runs", console=False)]
trainer = Trainer(model=model, args=args, train_dataset=Sequences(128, 0), callbacks=callbacks)
trainer.train()
rank = int(os.environ["RANK"])
torch.save(model.state_dict(), f"params_{how}_{rank}.pt")
print(f"rank {rank} done, collectives from traindoctor: {len(OURS)}", flush=True)
"""
)

HOWS = ("callback", "zero", "plain")


def _torchrun(root: Path, how: str) -> Job:
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    if how == "zero":
        cmd += ["-m", "traindoctor", "run", "--out", "runs"]
    return launch(root, how, SCRIPT, cmd, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    if not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun is not installed")
    return side_by_side(tmp_path_factory.mktemp("hf_ddp"), HOWS, _torchrun)


@pytest.mark.parametrize("how", ["callback", "zero"])
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


@pytest.mark.parametrize("how", ["callback", "zero"])
def test_parameters_bit_identical_to_the_plain_job(jobs, how):
    assert_params_as_plain(jobs, how)

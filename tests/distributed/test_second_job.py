"""Several jobs in one process (a second Lightning fit(), two td.watch blocks in a row): each
gets its own job directory, `<id>-2` for the second, picked by every rank alike from its own
directory (distributed/run_id.unused_by_this_process), so the second job's merge never mixes
with the first's."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.distributed._jobs import ended_well, launch
from traindoctor.distributed import RankInfo, unused_by_this_process
from traindoctor.distributed.merge import write_rank_meta
from traindoctor.distributed.ranks import rank_dir

INFO = RankInfo(rank=1, world_size=2)


def test_a_directory_this_process_wrote_is_taken(tmp_path):
    assert unused_by_this_process("job", tmp_path, INFO) == "job"
    write_rank_meta(rank_dir(tmp_path / "job", 1), INFO, "job")
    assert unused_by_this_process("job", tmp_path, INFO) == "job-2"
    write_rank_meta(rank_dir(tmp_path / "job-2", 1), INFO, "job-2")
    assert unused_by_this_process("job", tmp_path, INFO) == "job-3"


def test_another_process_s_directory_is_the_same_job(tmp_path):
    # Rank 1 of the same job started later than rank 0 wrote nothing here itself; a directory
    # another process wrote (an earlier attempt, or another rank's) is not this process's.
    d = rank_dir(tmp_path / "job", 1)
    d.mkdir(parents=True)
    (d / "rank.json").write_text(json.dumps({"host": "elsewhere", "pid": os.getpid()}))
    assert unused_by_this_process("job", tmp_path, INFO) == "job"


TWO_FITS = """import logging, sys, warnings
warnings.filterwarnings("ignore")
import torch
import lightning.pytorch as L
import traindoctor.lightning as tdl
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

class Lit(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :3].argmax(1)), batch_size=16)
torch.manual_seed(0)
model = Lit()
for steps in (4, 6):  # two fits in one process: two jobs
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[tdl.TraindoctorCallback(out_dir="runs", console=False)])
    trainer.fit(model, loader)
print(f"rank {trainer.global_rank} done", flush=True)
"""


@pytest.mark.slow
def test_a_second_lightning_fit_is_its_own_job(tmp_path):
    pytest.importorskip("lightning.pytorch")
    folder, code, out = launch(
        tmp_path, "fits", TWO_FITS, [sys.executable], unset=("TRAINDOCTOR_RUN_ID",), timeout=300
    )
    assert ended_well(code, out), out[-4000:]
    jobs = sorted(p.parent for p in (folder / "runs").glob("*/findings.json"))
    assert len(jobs) == 2, sorted((folder / "runs").rglob("findings.json"))
    assert jobs[1].name == f"{jobs[0].name}-2"
    for job_dir, steps in zip(jobs, (4, 6), strict=True):
        data = json.loads((job_dir / "findings.json").read_text())
        assert [(r["rank"], r["status"], r["steps"]) for r in data["ranks"]] == [
            (0, "closed", steps),
            (1, "closed", steps),
        ], job_dir

"""Lightning's `strategy="ddp"` (2 processes on CPU, gloo) with the traindoctor callback and
under `traindoctor run` (zero-code): every rank is watched and the job has one merged report.
Lightning's own launcher runs the script again for rank 1 (a child of rank 0): both ranks get
the same run id (TRAINDOCTOR_RUN_ID, set by the launcher before it starts rank 1), and under
`traindoctor run` rank 1 is started under the same command (it had run unwatched).
Parameters are bit-identical to a plain fit, and no collective is called from traindoctor's
files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cli.conftest import TRAINDOCTOR
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

pytest.importorskip("lightning.pytorch")
pytestmark = pytest.mark.slow

SCRIPT = (
    COUNT_COLLECTIVES
    + """
import logging, os, sys, warnings
warnings.filterwarnings("ignore")
import torch
import lightning.pytorch as L
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
WATCH = sys.argv[1] == "watch"  # the callback; "zero": under traindoctor run; "plain"

class Lit(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
data = torch.utils.data.TensorDataset(x, x[:, :3].argmax(1))
loader = torch.utils.data.DataLoader(data, batch_size=16)
torch.manual_seed(0)
model = Lit()
callbacks = []
if WATCH:
    import traindoctor.lightning as tdl
    callbacks = [tdl.TraindoctorCallback(out_dir="runs", console=False)]
trainer = L.Trainer(
    strategy="ddp", accelerator="cpu", devices=2, max_steps=6, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    callbacks=callbacks,
)
trainer.fit(model, loader)
rank = trainer.global_rank
torch.save(model.state_dict(), f"params_{sys.argv[1]}_{rank}.pt")
print(f"rank {rank} done, collectives from traindoctor: {len(OURS)}", flush=True)
"""
)


def _fit(root: Path, how: str) -> Job:
    cmd = [*TRAINDOCTOR, "run", "--out", "runs"] if how == "zero" else [sys.executable]
    # No TRAINDOCTOR_RUN_ID from outside: the callback (or the runner) must set it for rank 1.
    return launch(root, how, SCRIPT, cmd, unset=("TRAINDOCTOR_RUN_ID",), timeout=240)


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    return side_by_side(tmp_path_factory.mktemp("lightning_ddp"), ("watch", "zero", "plain"), _fit)


@pytest.mark.parametrize("how", ["watch", "zero"])
def test_every_rank_is_watched_in_one_job(fits, how):
    folder, code, out = fits[how]
    assert ended_well(code, out), out[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} done, collectives from traindoctor: 0" in out, out[-4000:]
    job_dir, data = job_report(folder)
    assert data["world_size"] == 2
    assert [(r["rank"], r["status"], r["steps"]) for r in data["ranks"]] == [
        (0, "closed", 6),
        (1, "closed", 6),
    ]
    assert data["run"]["ended"] == "normal" and not data["run"].get("unwatched_ranks")
    assert all(f["ranks"] == [0, 1] for f in data["findings"]), data["findings"]
    for rank in (0, 1):
        own = rank_report(job_dir, rank)
        assert (own["rank"], own["world_size"], own["steps"]) == (rank, 2, 6)
        assert not own["internal_errors"], own["internal_errors"]


@pytest.mark.parametrize("how", ["watch", "zero"])
def test_parameters_bit_identical_to_a_plain_fit(fits, how):
    assert_params_as_plain(fits, how)

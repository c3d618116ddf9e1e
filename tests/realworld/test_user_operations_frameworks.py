"""Checkpoints a framework writes while traindoctor watches are the framework's own: a Hugging
Face Trainer run (save_steps) and a Lightning run (ModelCheckpoint), plainly, with the framework
callback and under `traindoctor run`, train to the same parameters; their checkpoints list the
same files and callback states, and resuming from the watched runs' checkpoints in a process
where traindoctor cannot be imported (Lightning's warning about callbacks missing on resume as
an error) ends with the parameters of the plain run's resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ..cli.conftest import python, run_all, write
from ..cli.conftest import td as traindoctor

pytestmark = pytest.mark.slow

HF = """
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2))
g = torch.Generator().manual_seed(1)
ids = (torch.randint(0, 64, (64, 1), generator=g) + torch.arange(16)) % 64
data = [{"input_ids": row, "labels": row} for row in ids]
mode = sys.argv[1]
args = TrainingArguments(output_dir=f"hf_{mode}", max_steps=12, learning_rate=5e-3,
                         logging_steps=1, report_to=[], save_strategy="steps", save_steps=6,
                         use_cpu=True, seed=0, disable_tqdm=True)
callbacks = []
if mode == "callback":
    import traindoctor.transformers

    callbacks.append(traindoctor.transformers.TraindoctorCallback(console=False))
trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
trainer.train(resume_from_checkpoint=sys.argv[2] if len(sys.argv) > 2 else None)
torch.save([p.detach() for p in model.parameters()], f"hf_params_{mode}.pt")
"""

LIGHTNING = """
import sys

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class Classifier(L.LightningModule):
    def __init__(self, width=16):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.ReLU(),
                                       torch.nn.Dropout(0.1), torch.nn.Linear(width, 3))

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}


torch.manual_seed(0)
x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
mode = sys.argv[1]
# A resume keeps the folder (Lightning warns when a checkpoint's dirpath changed).
callbacks = [ModelCheckpoint(dirpath=f"pl_{mode.removeprefix('resume_')}", save_last=True)]
if mode == "callback":
    import traindoctor.lightning

    callbacks.append(traindoctor.lightning.TraindoctorCallback(console=False))
epochs = 3 if len(sys.argv) > 2 else 2
trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False,
                    enable_progress_bar=False, enable_model_summary=False)
model = Classifier()
trainer.fit(model, data, ckpt_path=sys.argv[2] if len(sys.argv) > 2 else None)
torch.save([p.detach() for p in model.parameters()], f"pl_params_{mode}.pt")
"""

RESUME = """
import runpy
import sys
import warnings

sys.modules["traindoctor"] = None  # not importable in this process
# Lightning's warning when a checkpoint names callbacks this run lacks, as an error.
warnings.filterwarnings("error", message=".*callbacks used to create the checkpoint")
script, mode, ckpt = sys.argv[1:]
sys.argv = [script, "resume_" + mode, ckpt]
runpy.run_path(script, run_name="__main__")
"""

MODES = ("plain", "callback", "run")


def _train(folder, script, mode):
    if mode == "run":
        return traindoctor(folder, "run", "--no-progress", script, "run", timeout=600)
    return python(folder, script, mode, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    f = tmp_path_factory.mktemp("framework_checkpoints")
    write(f, "hf.py", HF)
    write(f, "pl.py", LIGHTNING)
    write(f, "resume.py", RESUME)
    first = run_all(
        {f"{s}_{m}": (lambda s=s, m=m: _train(f, s, m)) for s in ("hf.py", "pl.py") for m in MODES}
    )
    for name in first:
        assert first[name].rc == 0, first[name]
    for m in MODES:  # as written by the first run (a resume writes last.ckpt again)
        shutil.copy(f / f"pl_{m}" / "last.ckpt", f / f"pl_{m}.ckpt")
    ckpts = {"hf.py": "hf_{}/checkpoint-6", "pl.py": "pl_{}.ckpt"}
    resumed = run_all(
        {
            f"{s}_{m}": (lambda s=s, m=m: python(f, "resume.py", s, m, ckpts[s].format(m)))
            for s in ("hf.py", "pl.py")
            for m in MODES
        }
    )
    return f, resumed


def _params(path):
    return torch.load(path, weights_only=True)


def _equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("mode", ["callback", "run"])
def test_trained_and_resumed_parameters_are_the_plain_runs(trained, mode):
    f, resumed = trained
    for name in resumed:
        assert resumed[name].rc == 0, resumed[name]
    for prefix in ("hf", "pl"):
        assert _equal(
            _params(f / f"{prefix}_params_plain.pt"), _params(f / f"{prefix}_params_{mode}.pt")
        )
        assert _equal(
            _params(f / f"{prefix}_params_resume_plain.pt"),
            _params(f / f"{prefix}_params_resume_{mode}.pt"),
        )


@pytest.mark.parametrize("mode", ["callback", "run"])
def test_checkpoints_hold_what_the_plain_runs_hold(trained, mode):
    f, _ = trained
    plain_dir, dir_ = f / "hf_plain" / "checkpoint-6", f / f"hf_{mode}" / "checkpoint-6"
    assert sorted(p.name for p in plain_dir.iterdir()) == sorted(p.name for p in dir_.iterdir())
    state = json.loads((dir_ / "trainer_state.json").read_text())
    plain_state = json.loads((plain_dir / "trainer_state.json").read_text())
    assert state["stateful_callbacks"].keys() == plain_state["stateful_callbacks"].keys()
    plain = torch.load(f / "pl_plain.ckpt", weights_only=False)
    ckpt = torch.load(f / f"pl_{mode}.ckpt", weights_only=False)
    assert sorted(ckpt) == sorted(plain) and list(ckpt["callbacks"]) == list(plain["callbacks"])
    assert all(torch.equal(v, plain["state_dict"][k]) for k, v in ckpt["state_dict"].items())

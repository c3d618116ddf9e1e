"""`traindoctor run` on unchanged Lightning / Hugging Face scripts: the framework is detected
and its callback watches the run (one report, the framework's view of steps and evaluations)."""

from __future__ import annotations

import textwrap

import pytest

from traindoctor.findings import Severity
from traindoctor.integrations.runner import run_target

pytest.importorskip("lightning")
pytest.importorskip("transformers")

LIGHTNING = """
import lightning.pytorch as L
import torch


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.head(self.encoder(x)), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.head(self.encoder(x)), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(PARAMS, lr=1e-2)


torch.manual_seed(0)
x = torch.randn(256, 8)
y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Classifier(), data, data)
"""

HF = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.utils import logging

logging.set_verbosity_error()
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2))
g = torch.Generator().manual_seed(1)
ids = (torch.randint(0, 64, (64, 1), generator=g) + torch.arange(16)) % 64
data = [{"input_ids": row, "labels": row} for row in ids]


class MyTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        out = model(**inputs)
        loss = LOSS
        return (loss, out) if return_outputs else loss


args = TrainingArguments(output_dir="hf-out", max_steps=12, learning_rate=5e-3, logging_steps=1,
                         eval_strategy="steps", eval_steps=6, report_to=[],
                         save_strategy="no", use_cpu=True)
MyTrainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8]).train()
"""


def _run(tmp_path, monkeypatch, source):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    result = run_target(str(script), [], out_dir=tmp_path / "runs", console=False)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # one report: the framework's doctor, not a second one
    return result.report


def _loud(report):
    return [f.code for f in report.findings if f.severity in (Severity.ERROR, Severity.WARNING)]


@pytest.mark.parametrize(
    ("params", "expect"), [("self.parameters()", None), ("self.head.parameters()", "TD103")]
)
def test_lightning_script_unchanged(params, expect, tmp_path, monkeypatch):
    report = _run(tmp_path, monkeypatch, LIGHTNING.replace("PARAMS", params))
    assert report.framework == "lightning" and not report.internal_errors
    assert report.timeline.events("validation")  # Lightning's own validation loop was seen
    if expect is None:
        assert _loud(report) == []
    else:
        assert report.findings[0].code == expect
        assert all(p.startswith("encoder.") for p in report.findings[0].where.params)


@pytest.mark.parametrize(
    ("loss", "expect"), [("out.loss", None), ("out.loss.detach().requires_grad_()", "TD101")]
)
def test_transformers_script_unchanged(loss, expect, tmp_path, monkeypatch):
    report = _run(tmp_path, monkeypatch, HF.replace("LOSS", loss))
    assert report.framework == "transformers" and not report.internal_errors
    assert report.timeline.events("validation")  # the Trainer's evaluation loop was seen
    if expect is None:
        assert _loud(report) == []
    else:
        assert report.findings[0].code == expect


def test_max_steps_stops_a_delegated_lightning_fit(tmp_path, monkeypatch):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(LIGHTNING.replace("PARAMS", "self.parameters()")))
    monkeypatch.chdir(tmp_path)
    result = run_target(str(script), [], out_dir=tmp_path / "runs", console=False, max_steps=5)
    report = result.report
    assert result.script_exit_code == 0 and result.exception is None
    assert report.framework == "lightning"
    assert report.steps == 5  # 3 epochs of 8 batches would be 24
    assert report.outcome["ended"] == "max_steps"


def test_run_selection_reaches_the_delegated_lightning_doctor(tmp_path, monkeypatch):
    """`traindoctor run --ignore TD103` on a Lightning script: Lightning's own doctor watches the
    run, with the command line's rules (it used to run every rule)."""
    from traindoctor import config

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(LIGHTNING.replace("PARAMS", "self.head.parameters()")))
    monkeypatch.chdir(tmp_path)
    settings = config.Settings().then(config.cli_layer((), (), ("TD103",)))
    result = run_target(
        str(script), [], out_dir=tmp_path / "runs", console=False, settings=settings
    )
    report = result.report
    assert report.framework == "lightning" and not report.internal_errors
    assert "TD103" not in {f.code for f in report.findings}


def test_a_framework_callback_reads_pyproject(tmp_path, monkeypatch):
    """[tool.traindoctor] applies to the framework callbacks as it does to watch()."""
    from traindoctor.lightning import TraindoctorCallback

    (tmp_path / "pyproject.toml").write_text('[tool.traindoctor]\nignore = ["TD103"]\n')
    script = tmp_path / "train.py"
    source = LIGHTNING.replace("PARAMS", "self.head.parameters()").replace(
        "enable_model_summary=False)",
        "enable_model_summary=False, callbacks=[CALLBACK])",
    )
    script.write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    callback = TraindoctorCallback(out_dir=tmp_path / "runs", console=False)
    namespace = {"CALLBACK": callback, "__name__": "__main__"}
    exec(compile(script.read_text(), str(script), "exec"), namespace)  # noqa: S102
    doc_rules = callback.report.timeline.facts["config"]["rules"]
    assert "TD103" not in doc_rules and "TD102" in doc_rules
    assert "TD103" not in {f.code for f in callback.report.findings}


SIGTERM_FIT = LIGHTNING.replace("PARAMS", "self.parameters()").replace(
    "trainer.fit(Classifier(), data, data)",
    """import os, signal
from lightning.pytorch.callbacks import Callback


class Kill(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            print("callback went on", file=open("seen.txt", "a"))

    def on_exception(self, trainer, pl_module, exception):
        print(type(exception).__name__, trainer.global_step, file=open("seen.txt", "a"))


trainer.callbacks.append(Kill())
trainer.fit(Classifier(), data, data)""",
)


def test_a_sigterm_during_a_lightning_fit_under_run_ends_it_as_plainly(tmp_path, monkeypatch):
    """Lightning's SIGTERM handler calls the one installed before it: `traindoctor run`'s
    (SIGTERM raised into the script, for the report). Plainly Lightning only notes the
    signal; the callback that sent it goes on, the loop stops at the next batch with
    SIGTERMException (a SystemExit, status 0) and `on_exception` sees it. Under `run` the
    step was interrupted where the signal came, with status 1."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SIGTERM_FIT))
    monkeypatch.chdir(tmp_path)
    result = run_target(str(script), [], out_dir=tmp_path / "runs", console=False)
    seen = (tmp_path / "seen.txt").read_text().splitlines()
    assert seen == ["callback went on", "SIGTERMException 3"]
    assert result.script_exit_code == 0
    assert result.report.framework == "lightning" and result.report.steps == 3
    assert signal.getsignal(signal.SIGTERM) == before

"""traindoctor.lightning.Doctor on real Lightning Trainers (CPU, tiny models, random data)."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")

import traindoctor.lightning as tdl  # noqa: E402
from traindoctor.findings import Severity  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore")
_W = torch.Generator().manual_seed(42)
TASK = torch.randn(8, 3, generator=_W)  # one task for training and validation data


def loader(n: int = 256, seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x @ TASK).argmax(1)
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, generator=g)


class Lit(L.LightningModule):
    """BatchNorm and Dropout make train/eval mode matter; `aux` is used in the forward."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(8, 16, bias=False),  # a bias before BatchNorm gets no gradient
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.1),
        )
        self.aux = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 3)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return self.head(h + self.aux(h))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        logits = self(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def fit(model: L.LightningModule, callbacks: list, runs, val: bool = True, **kwargs):  # noqa: ANN001, ANN201
    options = {
        "max_epochs": 3,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    options.update(kwargs)
    trainer = L.Trainer(callbacks=callbacks, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader(), loader(64, 1) if val else None)
    return trainer


def doctor(runs) -> object:  # noqa: ANN001
    return tdl.Doctor(out_dir=runs, console=False)


def loud(report) -> list:  # noqa: ANN001
    return [f for f in report.findings if f.severity in (Severity.ERROR, Severity.WARNING)]


def codes(report) -> list[str]:  # noqa: ANN001
    return [f.code for f in report.findings]


# -- healthy runs ---------------------------------------------------------------------------
def test_healthy_run_with_validation_is_silent(runs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = doctor(runs)
    trainer = fit(Lit(), [cb], runs)
    report = cb.report
    assert report is not None and cb.doctor is None  # closed at on_fit_end
    assert loud(report) == [], [(f.code, f.title) for f in loud(report)]
    assert "TD401" not in codes(report)  # Lightning validates under inference_mode
    tl = report.timeline
    assert report.steps == trainer.global_step == 24
    assert report.framework == "lightning"
    # sanity check + one validation per epoch, known to the doctor as validations
    assert len(tl.events("validation")) == 4
    # validation metrics under their Lightning names; the val loss as the validation loss
    assert [len(v) for _, v in tl.series("loss.val")] == [1, 1, 1]
    assert len(tl.series("metric.val_acc")) == 3
    # training metrics land on the step whose backward produced them
    logged = dict(tl.series("metric.train_loss"))
    backward = dict(tl.series("loss.backward"))
    assert logged[1] == backward[1] and logged[2] == backward[2]
    # names are the LightningModule's attribute paths
    assert "encoder.0.weight" in tl.get(1, "grads.norm")
    assert tl.facts["models"] == {"<model>": "Lit"}
    assert (runs / report.run_dir.name / "findings.json").exists()


def test_accumulate_grad_batches_counts_optimizer_steps(runs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = doctor(runs)
    trainer = fit(Lit(), [cb], runs, accumulate_grad_batches=4)
    report = cb.report
    assert loud(report) == [], [(f.code, f.title) for f in loud(report)]
    assert report.steps == trainer.global_step == 6  # 8 batches / 4, 3 epochs
    counts = [n for _, n in report.timeline.series("backward.count")]
    assert counts == [4] * 6
    # Lightning divides the loss by 4 before backward; the recorded loss is the user's loss
    assert {f for _, fs in report.timeline.series("loss.factor") for f in fs} == {0.25}


def test_parameters_bit_identical_with_and_without_callback(runs) -> None:  # noqa: ANN001
    def train(callbacks: list) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = Lit()
        fit(model, callbacks, runs, max_epochs=2, limit_train_batches=5, limit_val_batches=1)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    plain = train([])
    watched = train([doctor(runs)])
    assert plain.keys() == watched.keys()
    for k in plain:
        assert torch.equal(plain[k], watched[k]), k


class GradNorms(L.Callback):
    """Oracle: the gradient each optimizer step applies, read where Lightning has it."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        self.norms.append(float(pl_module.head.weight.grad.norm()))


def test_gradients_are_read_after_the_closure_backward(runs) -> None:  # noqa: ANN001
    # Lightning runs training_step + backward inside optimizer.step(closure): read at the
    # torch pre-step hook, the gradients would be the previous step's (None at step 1).
    torch.manual_seed(0)
    oracle, cb = GradNorms(), doctor(runs)
    fit(Lit(), [oracle, cb], runs, max_epochs=1, val=False)
    tl = cb.report.timeline
    for step in (1, 2, 3):  # the structural steps are always sampled
        assert tl.get(step, "grads.norm")["head.weight"] == pytest.approx(oracle.norms[step - 1])
        assert tl.get(step, "grads.none") == []
        assert tl.get(step, "numerics.checked")["loss"] == 1


def test_bf16_mixed_healthy(runs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = doctor(runs)
    fit(Lit(), [cb], runs, precision="bf16-mixed", max_epochs=2)
    assert loud(cb.report) == [], [(f.code, f.title) for f in loud(cb.report)]
    assert cb.report.timeline.facts["lightning"]["precision"] == "bf16-mixed"


# -- planted bugs ---------------------------------------------------------------------------
class LeftOut(Lit):
    def configure_optimizers(self):  # noqa: ANN201
        # BUG: `aux` is used in forward and trainable, but the optimizer never gets it
        params = [*self.encoder.parameters(), *self.head.parameters()]
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9)


def test_submodule_left_out_of_configure_optimizers(runs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = doctor(runs)
    fit(LeftOut(), [cb], runs, max_epochs=1)
    first = cb.report.findings[0]
    assert first.code == "TD103", codes(cb.report)
    assert set(first.where.params) == {"aux.weight", "aux.bias"}
    assert first.where.module == "aux"


class EvalLeaker(L.Callback):
    """A user callback that measures something in eval mode and never switches back."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        pl_module.eval()  # BUG: not switched back to train()


def test_callback_leaving_model_in_eval_mode(runs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = doctor(runs)
    fit(Lit(), [EvalLeaker(), cb], runs, max_epochs=2)
    first = cb.report.findings[0]
    assert first.code == "TD402", codes(cb.report)
    assert first.step == 9  # the first step of epoch 2
    assert first.where.module == "<model>"
    assert first.where.source.endswith(f"test_lightning.py:{_line('pl_module.eval()  # BUG')}")


class NoEvalSwitch(Lit):
    def on_validation_model_eval(self) -> None:
        pass  # BUG: overrides Lightning's model.eval() before validation


def test_validation_in_train_mode(runs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = doctor(runs)
    fit(NoEvalSwitch(), [cb], runs, max_epochs=1)
    first = cb.report.findings[0]
    assert first.code == "TD403", codes(cb.report)
    assert first.step == 1  # Lightning's sanity-check validation, before any step
    assert first.where.module == "encoder"
    assert first.where.source.endswith(f":{_line('logits = self(x)')}")


class NoZeroGrad(Lit):
    def __init__(self) -> None:
        super().__init__(lr=0.01)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        opt = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.manual_backward(loss)
        opt.step()  # BUG: opt.zero_grad() is never called
        self.log("train_loss", loss)


def test_manual_optimization_without_zero_grad(runs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = doctor(runs)
    trainer = fit(NoZeroGrad(), [cb], runs, max_epochs=1, val=False)
    assert cb.report.steps == trainer.global_step == 8
    first = cb.report.findings[0]
    assert first.code == "TD106", codes(cb.report)


def test_nan_from_too_high_lr_bf16(runs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = doctor(runs)
    fit(Lit(lr=1e12), [cb], runs, precision="bf16-mixed", max_epochs=1, val=False)
    first = cb.report.findings[0]
    # the weights grow huge but stay finite; the first non-finite value is aux's bf16 output
    assert first.code == "TD203", codes(cb.report)
    assert (first.where.module, first.where.op) == ("aux", "linear")
    assert first.where.source.endswith(f":{_line('return self.head(h + self.aux(h))')}")


def test_nan_from_too_high_lr_fp16_with_scaler(runs) -> None:  # noqa: ANN001
    # precision="16-mixed" on CPU silently becomes bf16-mixed (no scaler) in Lightning 2.6;
    # the plugin with an explicit CPU GradScaler is what "16-mixed" means on a GPU.
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    cb = doctor(runs)
    scaler = torch.amp.GradScaler("cpu")
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer = fit(Lit(lr=1e6), [cb], runs, plugins=[plugin], max_epochs=1, val=False)
    report = cb.report
    assert report.timeline.facts["lightning"]["scaler"] == "GradScaler"
    assert report.steps == trainer.global_step == 8  # steps the scaler skipped count too
    first = report.findings[0]
    assert first.code == "TD201" and first.step <= 3, codes(report)


def test_fp16_with_scaler_healthy(runs) -> None:  # noqa: ANN001
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    cb = doctor(runs)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    fit(Lit(), [cb], runs, plugins=[plugin], max_epochs=2)
    assert loud(cb.report) == [], [(f.code, f.title) for f in loud(cb.report)]


# -- lifecycle ------------------------------------------------------------------------------
class Crashes(Lit):
    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        if self.global_step == 3:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_exception_closes_the_doctor_and_writes_the_report(runs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = doctor(runs)
    with pytest.raises(RuntimeError, match="boom"):
        fit(Crashes(), [cb], runs, max_epochs=1, val=False)
    assert cb.doctor is None
    outcome = cb.report.timeline.facts["outcome"]
    assert outcome["ended"] == "exception" and "boom" in outcome["exception"]
    assert (runs / cb.report.run_dir.name / "findings.json").exists()


def test_import_traindoctor_does_not_import_lightning() -> None:
    code = (
        "import sys, traindoctor; traindoctor.watch; "
        "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _line(text: str) -> int:
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if text in line and "_line(" not in line)


def test_pytorch_lightning_package(runs) -> None:  # noqa: ANN001
    pl = pytest.importorskip("pytorch_lightning")

    class PLLit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 3)

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):  # noqa: ANN201
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    cb = tdl.callback_for(trainer, out_dir=runs, console=False)
    assert isinstance(cb, pl.Callback) and isinstance(cb, tdl.PLDoctor)
    trainer.callbacks.append(cb)  # what zero-code mode does with a user's Trainer
    trainer.fit(PLLit(), loader())
    assert cb.report.steps == trainer.global_step == 4
    assert "net.weight" in cb.report.timeline.get(1, "grads.norm")

"""`Trainer(callbacks=[traindoctor.transformers.Doctor()])` on tiny random models (no download)."""

from __future__ import annotations

import inspect
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from traindoctor.transformers import Doctor  # noqa: E402

torch.set_num_threads(1)
hf_logging.set_verbosity_error()

VOCAB, SEQ = 64, 16


class Sequences(Dataset):
    """Token sequences that count up by one (mod VOCAB): a tiny LM learns them in a few steps."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (start + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Classes(Dataset):
    """Sequences whose label is whether token 0 is in the lower half of the vocabulary."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        self.labels = (self.ids[:, 0] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    )


def bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def arguments(tmp_path, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(tmp_path / "hf"),
        max_steps=30,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        seed=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def loud(report) -> list[str]:
    return [f"{f.code} {f.title}" for f in report.findings if f.severity.value != "info"]


def test_importing_traindoctor_does_not_import_transformers():
    code = "import sys, traindoctor; traindoctor.watch; print('transformers' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_healthy_gpt2_with_accumulation_clipping_and_evals_is_silent(tmp_path):
    """Several epochs (64 samples / 8 per micro-batch / 2 accumulated = 4 steps an epoch),
    an evaluation every 5 steps, max_grad_norm clipping: no error or warning."""
    callback = Doctor(out_dir=tmp_path / "runs", console=False)
    args = arguments(
        tmp_path,
        gradient_accumulation_steps=2,
        max_grad_norm=1.0,
        eval_strategy="steps",
        eval_steps=5,
    )
    trainer = Trainer(
        model=gpt2(),
        args=args,
        train_dataset=Sequences(64, 1),
        eval_dataset=Sequences(16, 2),
        callbacks=[callback],
    )
    trainer.train()
    report = callback.report
    assert loud(report) == [], loud(report)
    assert report.framework == "transformers" and report.steps == 30
    assert trainer.state.epoch >= 7  # several epochs
    tl = report.timeline
    # One backward per micro-batch, two per optimizer step; each loss divided by the
    # number of tokens (the model's num_items_in_batch), not by a constant.
    assert all(len(v) == 2 for _, v in tl.series("loss.backward"))
    # The logged HF values, under their HF names, at the step they belong to.
    logged = dict(tl.series("loss.train"))
    assert sorted(logged) == list(range(1, 31))
    hf_log = [h for h in trainer.state.log_history if "loss" in h]
    assert [v[0] for _, v in sorted(logged.items())] == pytest.approx([h["loss"] for h in hf_log])
    assert len(tl.series("metric.grad_norm")) == 30
    assert len(tl.series("metric.learning_rate")) == 30
    # Six evaluations (after steps 5, 10, ..., 30), each seen as a validation with its loss.
    assert len(tl.events("validation")) == 6
    val = [v[0] for _, v in tl.series("loss.val")]
    hf_val = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert val == pytest.approx(hf_val) and val[-1] < val[0]
    # Trainer's modes untouched: it leaves the model in eval mode after the last evaluation.
    assert not trainer.model.training
    # The callback took its patches off the trainer.
    assert "evaluation_loop" not in vars(trainer) and "training_step" not in vars(trainer)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """A healthy BERT classifier with an accuracy metric, three evaluations."""
    tmp_path = tmp_path_factory.mktemp("bert")
    callback = Doctor(out_dir=tmp_path / "runs", console=False)
    args = arguments(tmp_path, max_steps=24, eval_strategy="steps", eval_steps=8)
    trainer = Trainer(
        model=bert(),
        args=args,
        train_dataset=Classes(64, 1),
        eval_dataset=Classes(32, 2),
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    trainer.train()
    return trainer, callback.report


def test_healthy_bert_classifier_metrics_are_validation_metrics(bert_run):
    trainer, report = bert_run
    assert [f.code for f in report.findings if f.severity.value == "error"] == []
    tl = report.timeline
    hf = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]
    assert [v[0] for _, v in tl.series("metric.eval_accuracy")] == pytest.approx(hf)
    assert len(hf) == 3 and hf[-1] > 0.6  # it learns
    assert "eval_accuracy" in tl.facts["validation_metrics"]
    assert not any("runtime" in n or "per_second" in n for n in tl.signal_names())


def test_healthy_bert_classifier_has_no_warning(bert_run):
    _, report = bert_run
    assert loud(report) == []


class DetachingTrainer(Trainer):
    """A compute_loss override that detaches the logits, then calls requires_grad_() to make
    the 'does not require grad' error go away: backward runs, nothing trains."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"]).logits.detach()
        labels = inputs["labels"]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        return loss.requires_grad_()


def test_compute_loss_that_detaches_is_td101_at_its_line(tmp_path):
    callback = Doctor(out_dir=tmp_path / "runs", console=False)
    trainer = DetachingTrainer(
        model=gpt2(),
        args=arguments(tmp_path, max_steps=6),
        train_dataset=Sequences(64, 1),
        callbacks=[callback],
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    line = inspect.currentframe().f_lineno + 1
    trainer.train()
    report = callback.report
    top = report.findings[0]
    assert top.code == "TD101" and top.step == 1
    assert "requires_grad_" in top.title + top.cause + top.fix
    # backward() runs inside the Trainer: the user's line is trainer.train(), and the
    # compute_loss override that made the loss is named in the run's facts.
    assert top.where.source.endswith(f"test_transformers.py:{line}")
    _, first = inspect.getsourcelines(DetachingTrainer.compute_loss)
    overrides = report.timeline.facts["transformers"]["overrides"]
    assert overrides == {"compute_loss": f"tests/integrations/test_transformers.py:{first}"}
    # What it says is what happened: no parameter moved.
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_head_left_out_of_the_optimizer_is_td103(tmp_path):
    """optimizers=(AdamW(model.bert.parameters()), None): the classifier head never trains."""
    model = bert()
    optimizer = torch.optim.AdamW(model.bert.parameters(), lr=5e-3)
    callback = Doctor(out_dir=tmp_path / "runs", console=False)
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path, max_steps=6),
        train_dataset=Classes(64, 1),
        optimizers=(optimizer, None),
        callbacks=[callback],
    )
    trainer.train()
    report = callback.report
    top = report.findings[0]
    assert top.code == "TD103", loud(report)
    assert set(top.where.params) == {"classifier.weight", "classifier.bias"}


def test_nan_from_too_high_lr_is_found_though_the_logs_hide_it(tmp_path):
    """SGD at lr 1e5 without clipping: the loss is NaN from step 3. The Trainer's default
    logging_nan_inf_filter logs something finite instead; the Doctor reads the real loss."""
    callback = Doctor(out_dir=tmp_path / "runs", console=False)
    args = arguments(tmp_path, max_steps=8, optim="sgd", learning_rate=1e5, max_grad_norm=0.0)
    assert args.logging_nan_inf_filter  # the default
    trainer = Trainer(model=gpt2(), args=args, train_dataset=Sequences(64, 1), callbacks=[callback])
    trainer.train()
    report = callback.report
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(v == v for v in logged)  # no NaN in the Trainer's own logs
    backward = [v[0] for _, v in report.timeline.series("loss.backward")]
    first_nan = next(i for i, v in enumerate(backward, start=1) if v != v)
    top = report.findings[0]
    assert top.code in {"TD201", "TD202", "TD203"} and top.severity.value == "error"
    assert top.step <= first_nan
    assert report.status == "failing"


def test_params_bit_identical_with_and_without_the_callback(tmp_path):
    def train(callbacks):
        trainer = Trainer(
            model=gpt2(),
            args=arguments(
                tmp_path,
                max_steps=8,
                gradient_accumulation_steps=2,
                max_grad_norm=0.5,
                eval_strategy="steps",
                eval_steps=4,
            ),
            train_dataset=Sequences(64, 1),
            eval_dataset=Sequences(16, 2),
            callbacks=callbacks,
        )
        trainer.train()
        return trainer.model.state_dict(), trainer.state.log_history

    plain, plain_log = train([])
    watched, watched_log = train([Doctor(out_dir=tmp_path / "runs", console=False)])
    assert plain.keys() == watched.keys()
    assert all(torch.equal(plain[k], watched[k]) for k in plain)

    def strip(log):  # timings differ from run to run
        return [
            {k: v for k, v in h.items() if "runtime" not in k and "second" not in k} for h in log
        ]

    assert strip(plain_log) == strip(watched_log)


def test_exception_in_training_closes_the_doctor_and_propagates(tmp_path):
    class Boom(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.state.global_step == 2:
                raise RuntimeError("boom")
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    callback = Doctor(out_dir=tmp_path / "runs", console=False)
    trainer = Boom(
        model=gpt2(),
        args=arguments(tmp_path, max_steps=6),
        train_dataset=Sequences(64, 1),
        callbacks=[callback],
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    report = callback.report
    assert report is not None and report.outcome["ended"] == "exception"
    assert "boom" in report.outcome["exception"]
    assert "training_step" not in vars(trainer)
    assert (report.run_dir / "findings.json").exists()


def test_attach_trainer_with_a_doctor_made_elsewhere_leaves_it_open(tmp_path):
    """Zero-code mode's entry point: the Trainer is known, the Doctor belongs to the runner."""
    from traindoctor.doctor import Doctor as CoreDoctor
    from traindoctor.transformers import attach_trainer

    doc = CoreDoctor(out_dir=tmp_path / "runs", console=False, framework="transformers")
    args = arguments(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=3)
    trainer = Trainer(
        model=gpt2(), args=args, train_dataset=Sequences(64, 1), eval_dataset=Sequences(16, 2)
    )
    callback = attach_trainer(trainer, doctor=doc)
    assert callback.trainer is trainer and callback in trainer.callback_handler.callbacks
    trainer.train()
    assert callback.report is None and doc.report is None  # still open: its owner closes it
    assert "evaluation_loop" not in vars(trainer)
    report = doc.close()
    assert report.steps == 6 and len(report.timeline.events("validation")) == 2
    assert loud(report) == []

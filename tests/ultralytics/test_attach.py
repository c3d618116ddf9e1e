"""traindoctor.ultralytics.attach(model) on real Ultralytics YOLO11n training (CPU, tiny data).

Each scenario is a user's `train.py` written into the test's directory and run as a script:
the lines findings point to are that script's lines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip(
    "ultralytics", reason="Ultralytics tests run in their own venv: `make test-ultralytics`"
)

from traindoctor.findings import Severity  # noqa: E402

from .conftest import LARGE, SMALL, line_of, run_script, train_args  # noqa: E402

PREAMBLE = """
import torch
from ultralytics import YOLO

import traindoctor.ultralytics

model = YOLO("yolo11n.yaml")
"""
TRAIN = """
doctor = traindoctor.ultralytics.attach(model, out_dir=OUT, console=False)
model.train(**ARGS)
"""
# What the trainer really did, read where Ultralytics has it: each optimizer step (a torch
# step hook on trainer.optimizer) and the summed loss of each batch.
ORACLE = """
STEPS, LOSSES = [], []


def oracle_setup(trainer):
    trainer.optimizer.register_step_post_hook(lambda *args: STEPS.append(1))


model.add_callback("on_pretrain_routine_end", oracle_setup)
model.add_callback("on_train_batch_end", lambda t: LOSSES.append(float(t.loss.detach())))
"""


def train(tmp_path, data, imgsz: int, body: str = "", **args) -> dict:
    """Run PREAMBLE + body + TRAIN as the user's script; its globals."""
    return run_script(
        tmp_path,
        PREAMBLE + body + TRAIN,
        ARGS=train_args(data, tmp_path, imgsz, **args),
        OUT=str(tmp_path / "runs"),
    )


def loud(report) -> list:
    return [(f.code, f.title) for f in report.findings if f.severity != Severity.INFO]


def codes(report) -> list[str]:
    return [f.code for f in report.findings]


def saved_findings(tmp_path) -> dict:
    (run_dir,) = (tmp_path / "runs").iterdir()
    return json.loads((run_dir / "findings.json").read_text())


# -- healthy ---------------------------------------------------------------------------------
def test_healthy_run_is_silent(large_data, tmp_path) -> None:
    ns = train(tmp_path, large_data, LARGE, ORACLE, epochs=4)
    report = ns["doctor"].report
    assert report is not None and report.framework == "ultralytics"
    assert loud(report) == [] and report.internal_errors == []
    tl = report.timeline
    # A step is an optimizer step of the trainer (12 images / batch 4, 4 epochs, nbs=batch)
    assert report.steps == len(ns["STEPS"]) == 12
    assert [n for _, n in tl.series("backward.count")] == [1] * 12
    # The loss of each backward is the trainer's summed loss of that batch
    backward = [v[0] for _, v in tl.series("loss.backward")]
    assert backward == pytest.approx(ns["LOSSES"], rel=1e-5)
    # The criterion's parts, under its names, add up to it; their gradients were measured
    parts = tl.get(1, "loss.parts")
    assert set(parts) == {"box_loss", "cls_loss", "dfl_loss"}
    assert sum(parts.values()) == pytest.approx(backward[0], rel=1e-5)
    assert set(tl.get(1, "loss.parts_grad")) == {"box_loss", "cls_loss", "dfl_loss"}
    # One validation per epoch, of the EMA (not the trained module), and its metrics under
    # Ultralytics' names: mAP moved, so TD404 had something to judge and stayed silent
    assert len(tl.events("validation")) == 4
    assert {e["model"] for e in tl.events("validated_model")} == {
        "a DetectionModel that is not a watched model"
    }
    maps = [v[0] for _, v in tl.series("metric.metrics/mAP50(B)")]
    assert len(maps) == 4 and len(set(maps)) > 1 and maps[-1] > 0
    assert len(tl.series("loss.val")) == 4  # the summed val/*_loss
    # The final check of best.pt is recorded, not judged as a validation of the trained model
    facts = tl.facts["ultralytics"]
    assert set(facts["final_validation"]) >= {"metrics/mAP50(B)", "metrics/precision(B)"}
    assert [v["kind"] for v in facts["validations"]] == ["train"] * 4 + ["final"]
    assert facts["args"]["nbs"] == 4 and facts["yolo_model_is_trained_model"] is False
    assert "model.0.conv.weight" in tl.get(1, "grads.norm")  # Ultralytics' own names
    assert (report.run_dir / "findings.json").exists()


def test_parameters_bit_identical_with_and_without_traindoctor(small_data, tmp_path) -> None:
    def trained(attach: bool, where) -> dict:
        body = PREAMBLE + (TRAIN if attach else "model.train(**ARGS)\n")
        ns = run_script(
            where,
            body,
            ARGS=train_args(small_data, where, SMALL, epochs=2),
            OUT=str(where / "runs"),
        )
        return ns["model"].trainer.model.state_dict()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain, watched = trained(False, tmp_path / "a"), trained(True, tmp_path / "b")
    assert plain.keys() == watched.keys()
    changed = [k for k in plain if not plain[k].equal(watched[k])]
    assert changed == []


def test_gradient_accumulation_counts_optimizer_steps(small_data, tmp_path) -> None:
    # nbs=4 with batch 2: Ultralytics accumulates 2 batches per optimizer step
    ns = train(tmp_path, small_data, SMALL, ORACLE, batch=2, nbs=4, warmup_epochs=0, epochs=2)
    report = ns["doctor"].report
    assert report.steps == len(ns["STEPS"]) == 8  # 16 images / 2 per batch / 2, 2 epochs
    assert [n for _, n in report.timeline.series("backward.count")] == [2] * 8
    assert report.timeline.facts["ultralytics"]["accumulate"] == 2


SCALER = """

def use_a_grad_scaler(trainer):
    # What amp=True gives on a GPU, on CPU: the trainer scales every loss and unscales before
    # its clip (Ultralytics' own AMP check needs a GPU and downloaded weights).
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)


model.add_callback("on_pretrain_routine_end", use_a_grad_scaler)
"""


def test_the_trainers_grad_scaler_is_watched(small_data, tmp_path) -> None:
    ns = train(tmp_path, small_data, SMALL, SCALER + ORACLE, epochs=2)
    report = ns["doctor"].report
    tl = report.timeline
    assert tl.facts["scaler"] == "GradScaler"
    assert report.steps == len(ns["STEPS"]) == 8
    # The loss backward ran on was scaled by 1024: the recorded loss is the trainer's own
    backward = [v[0] for _, v in tl.series("loss.backward")]
    assert backward == pytest.approx(ns["LOSSES"], rel=1e-5)
    assert tl.series("amp.scale")[0][1] == 1024.0
    # Ultralytics unscales before clipping and steps through the scaler
    assert not {"TD204", "TD205", "TD211"} & set(codes(report)), codes(report)


# -- planted bugs ----------------------------------------------------------------------------
EVAL_LEAK = """

def peek_at_predictions(trainer):
    # A callback that looks at the model's outputs after each batch
    trainer.model.eval()  # BUG: never switched back to train()
    with torch.no_grad():
        trainer.model(torch.zeros(1, 3, 64, 64))


model.add_callback("on_train_batch_end", peek_at_predictions)
"""


def test_callback_leaving_the_model_in_eval_mode(small_data, tmp_path) -> None:
    ns = train(tmp_path, small_data, SMALL, EVAL_LEAK)
    report = ns["doctor"].report
    first = report.findings[0]
    assert first.code == "TD402", codes(report)
    assert first.step == 2  # the step after the first batch's callback
    assert first.where.module == "<model>"
    source = PREAMBLE + EVAL_LEAK + TRAIN
    assert first.where.source.endswith(f"train.py:{line_of(source, '# BUG')}")
    assert "_model_train()" in first.cause and "on_train_batch_end" in first.cause
    assert "peek_at_predictions" in first.cause


def test_one_loss_part_dominates_by_its_gain(small_data, tmp_path) -> None:
    buggy = train(tmp_path, small_data, SMALL, box=100.0)["doctor"].report  # default 7.5
    found = [f for f in buggy.findings if f.code == "TD208"]
    assert found, codes(buggy)
    f = found[0]
    assert f.evidence["dominant"] == "box_loss"
    assert f.evidence["parts"]["box_loss"]["grad_share"] > 0.7
    assert f.evidence["ultralytics_gains"] == {"box": 100.0, "cls": 0.5, "dfl": 1.5}
    assert "`box` gain" in f.fix and "`box=100.0`" in f.cause
    assert f.where.source.endswith(f"train.py:{line_of(PREAMBLE + TRAIN, 'model.train(')}")
    # The same run with Ultralytics' default gains: no part dominates
    (tmp_path / "default").mkdir()
    default = train(tmp_path / "default", small_data, SMALL)["doctor"].report
    assert "TD208" not in codes(default)


# -- seed 000: validating the model being trained, in a callback ------------------------------
VALIDATE_LIVE_MODEL = """

def validate_live_model(trainer):
    # Seed 000's "manual validation" of the model being trained, at the end of each epoch,
    # done as a validator does it: fuse Conv+BN, eval, inference_mode
    model = trainer.model
    grad_state = {n: p.requires_grad for n, p in model.named_parameters()}
    with torch.inference_mode():  # REGION
        model.fuse(verbose=False)
        model.eval()
        model(torch.zeros(1, 3, 64, 64))
    model.train()
    for n, p in model.named_parameters():
        p.requires_grad = grad_state.get(n, True)  # RESTORE


model.add_callback("on_fit_epoch_end", validate_live_model)
"""


def test_seed_000_validating_the_live_model_under_inference_mode(small_data, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="inference tensor outside InferenceMode"):
        train(tmp_path, small_data, SMALL, VALIDATE_LIVE_MODEL)
    saved = saved_findings(tmp_path)
    source = PREAMBLE + VALIDATE_LIVE_MODEL + TRAIN
    # The report names the exception, where it was raised, and why it could not be avoided
    run = saved["run"]
    assert run["ended"] == "exception" and "Setting requires_grad=True" in run["exception"]
    assert run["source"].endswith(f"train.py:{line_of(source, '# RESTORE')}")
    first = saved["findings"][0]
    assert first["code"] == "TD401", [f["code"] for f in saved["findings"]]
    assert first["where"]["source"].endswith(f"train.py:{line_of(source, '# REGION')}")
    assert first["step"] == 5  # after the 4 steps of epoch 1, before the next one
    assert "model.0.conv.weight" in first["evidence"]["params"]
    assert first["evidence"]["held_by_an_optimizer"] == []  # the optimizer holds the old ones
    assert "validate_live_model" in first["cause"] and "trainer.ema.ema" in first["fix"]


VAL_IN_CALLBACK = """

def per_epoch_metrics(trainer):
    # Seed 000, attempt 2: run model.val() at the end of each epoch to get metrics
    metrics = model.val(data=ARGS["data"], imgsz=64, batch=8, plots=False)  # VAL
    PER_EPOCH.append(metrics.box.map50)


PER_EPOCH = []
model.add_callback("on_fit_epoch_end", per_epoch_metrics)
"""


def test_seed_000_model_val_in_a_callback_validates_an_untrained_model(
    small_data, tmp_path
) -> None:
    ns = train(tmp_path, small_data, SMALL, VAL_IN_CALLBACK)
    # the symptom: "metrics always 0" (3 epochs, and once more after the final validation)
    assert ns["PER_EPOCH"] == [0.0] * 4
    report = ns["doctor"].report
    source = PREAMBLE + VAL_IN_CALLBACK + TRAIN
    frozen = [f for f in report.findings if f.code == "TD405"]
    assert frozen, codes(report)
    f = frozen[0]
    assert f.evidence["validations"] == 3
    assert f.where.source.endswith(f"train.py:{line_of(source, '# VAL')}")
    assert "`YOLO.model` is not the model the trainer trains" in f.cause
    stuck = [f for f in report.findings if f.code == "TD404"]
    assert stuck and "callback_val/metrics/mAP50(B)" in stuck[0].evidence["metrics"]
    assert "the validation your callback ran" in stuck[0].cause
    assert "no prediction above conf=0.001" in stuck[0].cause


READ_VALIDATOR = """

def log_val_metrics(trainer):
    # Seed 000: per-epoch precision from the validator's confusion matrix, for the loggers
    cm = trainer.validator.confusion_matrix.matrix
    tp = cm.diagonal()[:-1].sum()
    trainer.metrics["val/precision_cm"] = float(tp / max(cm[:, :-1].sum(), 1))


model.add_callback("on_fit_epoch_end", log_val_metrics)
"""


def test_seed_000_metrics_read_from_validator_attributes_are_always_0(large_data, tmp_path) -> None:
    report = train(tmp_path, large_data, LARGE, READ_VALIDATOR, epochs=4)["doctor"].report
    source = PREAMBLE + READ_VALIDATOR + TRAIN
    # Ultralytics' own metrics moved; only the one the callback wrote is stuck
    assert [c for c, _ in loud(report)] == ["TD404"], loud(report)
    f = report.findings[0]
    assert list(f.evidence["metrics"]) == ["val/precision_cm"]
    assert f.evidence["ultralytics_confusion_matrix_sum"] == [0.0] * 4
    # the line that puts it there
    assert f.where.source.endswith(f"train.py:{line_of(source, 'trainer.metrics[')}")
    assert "confusion matrix summed to 0" in f.cause and "plots=True" in f.cause
    assert "trainer.validator.metrics.results_dict" in f.fix


def test_readme_example(small_data, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the example writes traindoctor-runs/ where it runs
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (block,) = [
        b
        for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
        if "traindoctor.ultralytics.attach(model)" in b
    ]
    call = 'model.train(data="data.yaml", epochs=3, imgsz=640)'
    assert call in block
    ns = run_script(
        tmp_path,
        block.replace(call, "model.train(**ARGS)"),
        ARGS=train_args(small_data, tmp_path, SMALL, epochs=1),
    )
    report = ns["doctor"].report
    assert report.framework == "ultralytics" and report.steps == 4
    assert (tmp_path / "traindoctor-runs" / report.run_dir.name / "findings.json").exists()

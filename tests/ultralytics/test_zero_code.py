"""`traindoctor run train.py` on an unchanged Ultralytics script: the trainer is detected when it
builds its optimizer and traindoctor.ultralytics' callbacks watch the run (one report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "ultralytics", reason="Ultralytics tests run in their own venv: `make test-ultralytics`"
)

from traindoctor.findings import Severity  # noqa: E402
from traindoctor.integrations.runner import run_target  # noqa: E402

from .conftest import LARGE, SMALL, line_of, train_args, write_script  # noqa: E402

UNCHANGED = """
import torch
from ultralytics import YOLO

model = YOLO("yolo11n.yaml")
{callbacks}
model.train(**{args!r})
"""
EVAL_LEAK = """

def peek_at_predictions(trainer):
    trainer.model.eval()  # BUG: never switched back to train()
    with torch.no_grad():
        trainer.model(torch.zeros(1, 3, 64, 64))


model.add_callback("on_train_batch_end", peek_at_predictions)
"""
ATTACHED = """
import traindoctor.ultralytics

doctor = traindoctor.ultralytics.attach(model, out_dir={out!r}, console=False)
"""


def script(tmp_path, data, imgsz: int, callbacks: str = "", **args) -> tuple[Path, str]:
    source = UNCHANGED.format(callbacks=callbacks, args=train_args(data, tmp_path, imgsz, **args))
    return write_script(tmp_path, source), source


def run(tmp_path, monkeypatch, path: Path, **options):
    monkeypatch.chdir(tmp_path)
    result = run_target(str(path), [], out_dir=tmp_path / "runs", console=False, **options)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # one report
    return result


def loud(report) -> list:
    return [(f.code, f.title) for f in report.findings if f.severity != Severity.INFO]


def test_unchanged_healthy_script(large_data, tmp_path, monkeypatch) -> None:
    path, _ = script(tmp_path, large_data, LARGE, epochs=4)
    result = run(tmp_path, monkeypatch, path)
    report = result.report
    assert result.script_exit_code == 0 and report.internal_errors == []
    assert report.framework == "ultralytics" and report.timeline.facts["mode"] == "zero-code"
    assert loud(report) == []
    assert report.steps == 12  # the trainer's optimizer steps, as with attach()
    assert len(report.timeline.events("validation")) == 4  # Ultralytics' own, seen as such
    assert set(report.timeline.get(1, "loss.parts")) == {"box_loss", "cls_loss", "dfl_loss"}
    assert "final_validation" in report.timeline.facts["ultralytics"]


def test_unchanged_script_with_a_buggy_callback(small_data, tmp_path, monkeypatch) -> None:
    path, source = script(tmp_path, small_data, SMALL, EVAL_LEAK)
    report = run(tmp_path, monkeypatch, path).report
    first = report.findings[0]
    assert first.code == "TD402", [f.code for f in report.findings]
    assert first.step == 2
    assert first.where.source.endswith(f"train.py:{line_of(source, '# BUG')}")
    assert "on_train_batch_end" in first.cause


VAL_IN_CALLBACK = """

def per_epoch_metrics(trainer):
    metrics = model.val(data=trainer.args.data, imgsz=64, batch=8, plots=False)  # VAL


model.add_callback("on_fit_epoch_end", per_epoch_metrics)
"""


def test_unchanged_script_validating_in_a_callback(small_data, tmp_path, monkeypatch) -> None:
    # model.val() builds its validator with the YOLO's callbacks: found from the trainer
    path, source = script(tmp_path, small_data, SMALL, VAL_IN_CALLBACK)
    report = run(tmp_path, monkeypatch, path).report
    frozen = [f for f in report.findings if f.code == "TD405"]
    assert frozen, [f.code for f in report.findings]
    assert frozen[0].where.source.endswith(f"train.py:{line_of(source, '# VAL')}")
    assert "metric.callback_val/metrics/mAP50(B)" in report.timeline.signal_names("metric.")


def test_max_steps_ends_the_run_cleanly(small_data, tmp_path, monkeypatch) -> None:
    path, _ = script(tmp_path, small_data, SMALL)
    result = run(tmp_path, monkeypatch, path, max_steps=5)
    assert result.script_exit_code == 0
    assert result.report.steps == 5
    assert result.report.timeline.facts["outcome"]["ended"] == "max_steps"


def test_a_script_that_attaches_itself_gets_one_report(small_data, tmp_path, monkeypatch) -> None:
    path, _ = script(
        tmp_path, small_data, SMALL, ATTACHED.format(out=str(tmp_path / "runs")), epochs=1
    )
    result = run(tmp_path, monkeypatch, path)
    assert result.report.timeline.facts["mode"] == "ultralytics"  # the script's own doctor
    assert result.report.steps == 4


# A `sitecustomize` that refuses every connection in the `traindoctor run` subprocess, and
# writes down what was attempted (the in-process guard of conftest.py does not reach it).
NO_NETWORK = """
import socket

def refuse(*args, **kwargs):
    with open({log!r}, "a") as f:
        f.write(repr(args) + "\\n")
    raise OSError("network access blocked")

socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
"""


def test_traindoctor_run_command(small_data, tmp_path) -> None:
    path, source = script(tmp_path, small_data, SMALL, EVAL_LEAK, epochs=2)
    guard = tmp_path / "guard"
    guard.mkdir()
    attempts = tmp_path / "network-attempts.txt"
    (guard / "sitecustomize.py").write_text(NO_NETWORK.format(log=str(attempts)))
    env = {**os.environ, "PYTHONPATH": str(guard)}
    cmd = [sys.executable, "-m", "traindoctor", "run", "--json", "--fail-on", "error"]
    cmd += ["--out", str(tmp_path / "runs"), str(path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert not attempts.exists(), attempts.read_text()
    assert proc.returncode == 3, proc.stderr[-3000:]  # an error finding: --fail-on error
    findings = json.loads(proc.stdout)
    assert findings["framework"] == "ultralytics"
    first = findings["findings"][0]
    assert first["code"] == "TD402"
    assert first["where"]["source"] == f"train.py:{line_of(source, '# BUG')}"

"""Findings where users already look: W&B (offline), TensorBoard and MLflow (file store), each
read back with the library's own reader; nothing reaches the network.

The buggy loop applies softmax before cross_entropy (TD506, an error, gradients still flow so
the per-layer values are measured); the healthy one is the same loop without it.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import traindoctor as td
from traindoctor.errors import UsageError
from traindoctor.findings import Finding, Severity, Where
from traindoctor.integrations.trackers.measurements import MAX_LAYERS, Measurements
from traindoctor.timeline import Timeline

STEPS = 60
PARAMS = ("0.weight", "0.bias", "2.weight", "2.bias")


def _train(tmp: Path, *, bug: bool = True, export: object = "auto", log=None):
    """The user's loop; `log(step, loss)` is the user's own logging to their tracker."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(128, 16), torch.randint(0, 4, (128,))
    with td.watch(model, opt, out_dir=tmp / "runs", console=False, export=export) as doc:
        for step in range(STEPS):
            opt.zero_grad()
            out = model(x)
            if bug:
                out = out.softmax(-1)  # bug: cross_entropy takes logits
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            if log is not None:
                log(step, loss.item())
    return model, doc.report


# -- TensorBoard ---------------------------------------------------------------------------


def _tb_read(log_dir: Path) -> tuple[dict, dict]:
    """{tag: [(step, value)]} of scalars and {tag: [(step, text)]} of texts, read back with
    TensorBoard's own EventAccumulator (every event file of the directory)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    texts = {
        t.removesuffix("/text_summary"): [
            (e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(t)
        ]
        for t in acc.Tags()["tensors"]
    }
    return scalars, texts


@pytest.mark.slow
def test_tensorboard_gets_findings_status_and_measured_values(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    try:
        _, report = _train(tmp_path, log=lambda s, v: writer.add_scalar("loss", v, s))
    finally:
        writer.close()
    assert "TD506" in report.codes and report.internal_errors == []
    scalars, texts = _tb_read(tmp_path / "tb")
    # The user's own scalar: untouched.
    assert [s for s, _ in scalars["loss"]] == list(range(STEPS))
    # Findings as text at the step of the pass that made them, the status at the last step.
    found = "\n".join(text for _, text in texts["traindoctor/findings"])
    assert "**error TD506**" in found
    [(last, status)] = texts["traindoctor/status"]
    assert last == STEPS and status.startswith("failing: 1 error(s)")
    assert scalars["traindoctor/errors"] == [(STEPS, 1.0)]
    # Per-layer values at the sampled steps only (never every step), with their own steps.
    grad_steps = [s for s, _ in scalars["traindoctor/grad_norm/2.weight"]]
    assert grad_steps[:3] == [1, 2, 3] and len(grad_steps) < STEPS // 3
    for p in PARAMS:
        assert [s for s, _ in scalars[f"traindoctor/grad_norm/{p}"]] == grad_steps
        assert [s for s, _ in scalars[f"traindoctor/update_ratio/{p}"]] == grad_steps
    assert scalars["traindoctor/lr/opt0/group0"][0] == (1, pytest.approx(0.1))


@pytest.mark.slow
def test_tensorboardx_writer_gets_the_status(tmp_path):
    # tensorboardX's SummaryWriter has no get_logdir() (found on pytorch-flows' main.py)
    tbx = pytest.importorskip("tensorboardX")
    writer = tbx.SummaryWriter(str(tmp_path / "tbx"))
    try:
        _, report = _train(tmp_path, log=lambda s, v: writer.add_scalar("loss", v, s))
    finally:
        writer.close()
    assert "TD506" in report.codes and report.internal_errors == []
    _, texts = _tb_read(tmp_path / "tbx")
    assert texts["traindoctor/status"][0][1].startswith("failing: 1 error(s)")


@pytest.mark.slow
def test_tensorboard_writer_closed_before_close_gets_the_summary(tmp_path):
    """The Trainer's TensorBoard callback closes its writer at train end, before ours: the
    close-time summary goes to the same directory through a writer of traindoctor's."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))

    def log(step, value):
        writer.add_scalar("loss", value, step)
        if step == STEPS - 1:
            writer.close()

    _, report = _train(tmp_path, log=log)
    assert report.internal_errors == []
    _, texts = _tb_read(tmp_path / "tb")
    assert texts["traindoctor/status"][0][1].startswith("failing")
    assert writer.all_writers is None  # the user's writer stays closed


# -- MLflow --------------------------------------------------------------------------------


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path / 'mlruns'}"
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow, mlflow.tracking.MlflowClient(tracking_uri=uri)
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_mlflow_gets_tags_metrics_and_the_report(tmp_path, mlflow_store):
    mlflow, client = mlflow_store
    with mlflow.start_run() as run:
        _, report = _train(tmp_path, log=lambda s, v: mlflow.log_metric("loss", v, step=s))
    data = client.get_run(run.info.run_id).data
    assert data.tags["traindoctor.status"] == "failing"
    assert data.tags["traindoctor.errors"] == "1"
    assert data.tags["traindoctor.TD506"].startswith("error: ")
    history = client.get_metric_history(run.info.run_id, "traindoctor/grad_norm/0.weight")
    assert [m.step for m in history][:3] == [1, 2, 3] and len(history) < STEPS // 3
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(
        range(STEPS)
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "traindoctor")}
    assert artifacts == {
        "traindoctor/report.md",
        "traindoctor/report.html",
        "traindoctor/findings.json",
    }
    local = client.download_artifacts(run.info.run_id, "traindoctor/findings.json", str(tmp_path))
    assert [f["code"] for f in json.loads(Path(local).read_text())["findings"]] == report.codes


@pytest.mark.slow
def test_mlflow_healthy_run_and_export_none(tmp_path, mlflow_store):
    mlflow, client = mlflow_store
    with mlflow.start_run() as healthy:
        _, report = _train(tmp_path, bug=False)
    assert report.status == "healthy"
    tags = client.get_run(healthy.info.run_id).data.tags
    assert tags["traindoctor.status"] == "healthy" and tags["traindoctor.errors"] == "0"
    with mlflow.start_run() as off:
        _train(tmp_path, export=None)
    data = client.get_run(off.info.run_id).data
    assert not [k for k in (*data.tags, *data.metrics) if k.startswith("traindoctor")]
    assert client.list_artifacts(off.info.run_id) == []


# -- W&B -----------------------------------------------------------------------------------


def _wandb_records(run_dir: Path):
    """The records of an offline run's .wandb file, decoded with wandb's own protobuf class
    (wandb 0.31 ships no Python reader of the file: its framing is LevelDB's log format, 32 KiB
    blocks of [crc32c, length, type] chunks after a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    [path] = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _wandb_run(tmp: Path, export: object = "auto"):
    wandb = pytest.importorskip("wandb")
    run = wandb.init(mode="offline", dir=str(tmp), project="traindoctor-test")
    try:
        model, report = _train(tmp, export=export, log=lambda s, v: run.log({"loss": v}))
    finally:
        run.finish()
        wandb.teardown()  # offline: finish() returns before the file is all written
    history, summary, alerts = [], {}, []
    for r in _wandb_records(tmp):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
        elif kind == "summary":
            summary.update(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in r.summary.update
                }
            )
        elif kind == "alert":
            alerts.append(r.alert)
    return model, report, history, summary, alerts


def _user_rows(history: list[dict]) -> list[tuple]:
    return [(row["_step"], row["loss"]) for row in history if "loss" in row]


@pytest.mark.slow
def test_wandb_offline_gets_alerts_table_status_and_values(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model, report, history, summary, alerts = _wandb_run(tmp_path / "on")
    assert "TD506" in report.codes and report.internal_errors == []
    assert [a.level for a in alerts] == ["ERROR"] and "TD506" in alerts[0].title
    assert summary["traindoctor/status"] == "failing" and summary["traindoctor/errors"] == 1
    assert summary["traindoctor/TD506"].startswith("error: ")
    # The measured values on the custom x-axis traindoctor/step, at sampled steps, joined to
    # the user's rows (commit=False): the step counter stays the user's.
    measured = [row for row in history if "traindoctor/grad_norm/0.weight" in row]
    assert measured and all(row["traindoctor/step"] <= row["_step"] + 1 for row in measured)
    # The findings table, in the run's files (at close: in the row finish() commits last).
    table_row = next(row for row in history if "traindoctor/findings/_type" in row)
    [table_file] = glob.glob(
        str(
            tmp_path
            / "on"
            / "wandb"
            / "offline-run-*"
            / "files"
            / table_row["traindoctor/findings/path"]
        )
    )
    table = json.loads(Path(table_file).read_text())
    assert table["columns"][:2] == ["code", "severity"]
    assert [r[0] for r in table["data"]] == report.codes
    # Without traindoctor's export: the same user rows at the same steps, the same weights.
    off_model, _, off_history, off_summary, off_alerts = _wandb_run(tmp_path / "off", None)
    assert _user_rows(history) == _user_rows(off_history)
    assert [row["_step"] for row in off_history] == list(range(STEPS))
    assert not off_alerts and not [k for k in off_summary if k.startswith("traindoctor")]
    sd, off_sd = model.state_dict(), off_model.state_dict()
    assert all(torch.equal(sd[k], off_sd[k]) for k in sd)


@pytest.mark.slow
def test_wandb_healthy_run_posts_healthy_and_no_alert(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = pytest.importorskip("wandb")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="traindoctor-test")
    try:
        _, report = _train(tmp_path, bug=False, log=lambda s, v: run.log({"loss": v}))
    finally:
        run.finish()
        wandb.teardown()  # offline: finish() returns before the file is all written
    summary, alerts = {}, []
    for r in _wandb_records(tmp_path):
        if r.WhichOneof("record_type") == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in r.summary.update if i.key})
        alerts += [r.alert] if r.WhichOneof("record_type") == "alert" else []
    assert report.status == "healthy" and not alerts
    assert summary["traindoctor/status"] == "healthy" and summary["traindoctor/errors"] == 0


# -- Lightning ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_lightning_tensorboard_logger_gets_the_findings(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import TensorBoardLogger

    import traindoctor.lightning

    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x).softmax(-1), y)  # bug: probabilities
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = list(zip(torch.randn(128, 16), torch.randint(0, 4, (128,))))
    callback = traindoctor.lightning.TraindoctorCallback(out_dir=tmp_path / "runs", console=False)
    trainer = L.Trainer(
        max_epochs=2,
        logger=TensorBoardLogger(str(tmp_path / "tb"), name="lit"),
        callbacks=[callback],
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Lit(), torch.utils.data.DataLoader(data, batch_size=16))
    assert "TD506" in callback.report.codes and callback.report.internal_errors == []
    [version] = (tmp_path / "tb" / "lit").iterdir()
    scalars, texts = _tb_read(version)
    assert "train_loss" in scalars  # Lightning's own, in the same run
    assert "**error TD506**" in texts["traindoctor/findings"][0][1]
    assert texts["traindoctor/status"][0][1].startswith("failing")
    # Named by the LightningModule's attribute paths.
    assert scalars["traindoctor/grad_norm/net.0.weight"][0][0] == 1


# -- Hugging Face Trainer -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_transformers_report_to_tensorboard_and_mlflow(tmp_path, mlflow_store, monkeypatch):
    """The Trainer's callbacks close their writer and end the MLflow run they started at train
    end, before traindoctor's close: the end of run still reaches both."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from traindoctor.transformers import Doctor

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

        def forward(self, x, labels):
            probs = self.net(x).softmax(-1)  # bug: cross_entropy takes logits
            return {"loss": nn.functional.cross_entropy(probs, labels), "logits": probs}

    mlflow, client = mlflow_store
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    torch.manual_seed(0)
    data = [{"x": torch.randn(16), "labels": torch.randint(0, 4, ()).item()} for _ in range(64)]
    callback = Doctor(out_dir=tmp_path / "runs", console=False)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=0.1,
        report_to=["tensorboard", "mlflow"],
        logging_steps=4,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    Trainer(model=Tiny(), args=args, train_dataset=data, callbacks=[callback]).train()
    report = callback.report
    assert "TD506" in report.codes and report.internal_errors == []
    scalars, texts = _tb_read(tmp_path / "tb")
    assert "train/loss" in scalars  # the Trainer's own, unchanged
    assert texts["traindoctor/status"][0][1].startswith("failing")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"  # ended by the Trainer, tagged after
    assert run.data.tags["traindoctor.status"] == "failing"
    assert "train_loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "traindoctor")}
    assert "traindoctor/findings.json" in artifacts


# -- every tracker at once: the training and the user's logging unchanged ------------------


@pytest.mark.slow
def test_parameters_and_user_metrics_identical_with_and_without_export(tmp_path, mlflow_store):
    from torch.utils.tensorboard import SummaryWriter

    mlflow, client = mlflow_store
    results = {}
    for export in ("auto", None):
        tmp = tmp_path / str(export)
        writer = SummaryWriter(str(tmp / "tb"))
        with mlflow.start_run() as run:

            def log(step, value, writer=writer):
                writer.add_scalar("loss", value, step)
                mlflow.log_metric("loss", value, step=step)

            model, _ = _train(tmp, export=export, log=log)
        writer.close()
        scalars, _ = _tb_read(tmp / "tb")
        user_mlflow = [
            (m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")
        ]
        results[export] = (model.state_dict(), scalars["loss"], user_mlflow, set(scalars))
    (with_sd, with_tb, with_ml, with_tags), (off_sd, off_tb, off_ml, off_tags) = results.values()
    assert all(torch.equal(with_sd[k], off_sd[k]) for k in off_sd)
    assert with_tb == off_tb and with_ml == off_ml
    assert off_tags == {"loss"} and any(t.startswith("traindoctor/") for t in with_tags)


@pytest.mark.slow
def test_a_failing_tracker_is_an_internal_error_never_raised(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    class BrokenWriter(SummaryWriter):
        def add_text(self, *args, **kwargs):
            raise RuntimeError("tracker down")

    writer = BrokenWriter(str(tmp_path / "tb"))
    try:
        _, report = _train(tmp_path)
    finally:
        writer.close()
    assert [e["where"] for e in report.internal_errors] == ["tracker tensorboard"]
    written = json.loads((Path(report.run_dir) / "findings.json").read_text())
    assert [e["where"] for e in written["internal_errors"]] == ["tracker tensorboard"]


@pytest.mark.slow
def test_nothing_imported_without_an_active_tracker(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys, torch, torch.nn as nn, traindoctor as td
        model = nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with td.watch(model, opt, out_dir={str(tmp_path)!r}, console=False):
            for _ in range(5):
                opt.zero_grad()
                model(torch.randn(8, 4)).pow(2).mean().backward()
                opt.step()
        print(sorted(m for m in sys.modules if m.split(".")[0] in
              ("wandb", "mlflow", "tensorboard", "tensorboardX")
              or m.startswith("torch.utils.tensorboard")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


# -- options -------------------------------------------------------------------------------


def test_export_option_is_checked(monkeypatch):
    monkeypatch.delenv("TRAINDOCTOR_EXPORT", raising=False)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        UsageError, match=r"watch\(export=\.\.\.\) got 'wandbb'.*did you mean 'wandb'"
    ):
        td.watch(model, opt, export=["wandbb"])
    with pytest.raises(UsageError, match=r"got 3 \(int\); pass 'auto'"):
        td.watch(model, opt, export=3)
    monkeypatch.setenv("TRAINDOCTOR_EXPORT", "tensorbord")
    with pytest.raises(UsageError, match=r"TRAINDOCTOR_EXPORT='tensorbord' got 'tensorbord'"):
        td.watch(model, opt)


def test_export_values_and_environment(monkeypatch):
    from traindoctor.options import Options

    monkeypatch.delenv("TRAINDOCTOR_EXPORT", raising=False)
    assert Options.checked("watch").export == "auto"
    assert Options.checked("watch", export=None).export == ()
    assert Options.checked("watch", export="none").export == ()
    assert Options.checked("watch", export=[]).export == ()
    assert Options.checked("watch", export="wandb,MLflow").export == ("wandb", "mlflow")
    assert Options.checked("watch", export=("tensorboard",)).export == ("tensorboard",)
    monkeypatch.setenv("TRAINDOCTOR_EXPORT", "mlflow")  # replaces the default only
    assert Options.checked("watch").export == ("mlflow",)
    assert Options.checked("watch", export=["wandb"]).export == ("wandb",)
    monkeypatch.setenv("TRAINDOCTOR_EXPORT", "none")  # turns any list off
    assert Options.checked("watch", export=["wandb"]).export == ()


def test_cli_export_option(tmp_path, monkeypatch):
    from traindoctor.cli import main

    monkeypatch.delenv("TRAINDOCTOR_EXPORT", raising=False)
    script = tmp_path / "train.py"
    script.write_text("import os\nprint('EXPORT', os.environ.get('TRAINDOCTOR_EXPORT'))\n")
    out = subprocess.run(
        [sys.executable, "-m", "traindoctor", "run", "--export", "wandbb", str(script)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 4
    assert "--export got 'wandbb' (str), not a tracker; did you mean 'wandb'?" in out.stderr
    with pytest.raises(SystemExit), pytest.warns(UserWarning, match="never had active"):
        main(["run", "--export", "tensorboard", "--out", str(tmp_path / "runs"), str(script)])
    assert "TRAINDOCTOR_EXPORT" not in os.environ  # restored after the command


# -- which series ------------------------------------------------------------------------


def test_series_are_bounded_and_follow_the_findings():
    tl = Timeline()
    tl.facts["params"] = {f"l{i}.weight": {"numel": 1000 + i} for i in range(40)}
    tl.facts["params"]["tiny.bias"] = {"numel": 3}
    tl.record(5, "grads.norm", {name: 1.0 for name in tl.facts["params"]})
    named = Finding("TD104", "x", Severity.ERROR, "t", 5, where=Where(params=("tiny.bias",)))
    measure = Measurements(tl)
    layers = measure.choose([named])
    assert layers[0] == "tiny.bias" and len(layers) == MAX_LAYERS
    assert layers[1:] == [f"l{i}.weight" for i in range(39, 39 - MAX_LAYERS + 1, -1)]
    points = measure.since(0, [named])
    assert {p.step for p in points} == {5} and len(points) == MAX_LAYERS
    assert measure.since(5, [named]) == []


def test_measured_values_of_a_sampled_step():
    tl = Timeline()
    tl.facts["params"] = {"w": {"numel": 4}, "b": {"numel": 2}}
    tl.record(3, "grads.norm", {"w": 2.0, "b": float("nan")})
    tl.record(3, "params.update", {"w": 0.5, "b": 0.1})
    tl.record(3, "params.norm", {"w": 10.0, "b": 0.0})  # b: no ratio of a zero norm
    tl.record(3, "amp.scale", 1024.0)
    tl.record(3, "optim.lr", {"opt0/group0": 0.01})
    tl.record(4, "amp.scale", 512.0)  # not a sampled step: not posted
    got = {p.key: p.value for p in Measurements(tl).since(0, [])}
    assert got.pop("traindoctor/grad_norm/b") != got.get("traindoctor/grad_norm/b")  # NaN kept
    assert got == {
        "traindoctor/grad_norm/w": 2.0,
        "traindoctor/update_ratio/w": 0.05,
        "traindoctor/amp_scale": 1024.0,
        "traindoctor/lr/opt0/group0": 0.01,
    }

"""`traindoctor report DIR` on a run killed with SIGKILL before close(): the streamed timeline
is re-diagnosed and the report says the run never closed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from traindoctor.cli import main
from traindoctor.timeline import Timeline

from .conftest import TIMEOUT, env, write

KILLED_AT = 60
WRITTEN = 50  # the last read-back step before the kill: written to disk then

SCRIPT = f"""
import os, signal
import torch
import traindoctor as td

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
doc = td.watch(model, opt, out_dir="runs", console=False)
for step in range(1, 1000):
    x = torch.randn(16, 4)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    doc.log(loss=loss)
    if step == {KILLED_AT}:
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit, no finally
"""


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("killed")
    write(cwd, "train.py", SCRIPT)
    p = subprocess.run(
        [sys.executable, "train.py"], cwd=cwd, env=env(), capture_output=True, timeout=TIMEOUT
    )
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    (run_dir,) = (cwd / "runs").iterdir()
    return run_dir


def test_a_killed_run_leaves_a_timeline_that_loads(killed):
    assert not (killed / "findings.json").exists()
    tl = Timeline.from_jsonl(killed / "timeline.jsonl")
    assert not tl.ended
    assert tl.last_step == WRITTEN
    assert tl.series("loss.train"), "the losses read back before the kill are on disk"


def _report(*argv: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report", *argv])
    assert exc.value.code == 0


def test_report_renders_a_killed_run(killed, capsys):
    _report(str(killed), "--json")
    out = json.loads(capsys.readouterr().out)
    assert out["run"]["ended"] == "killed"
    assert out["steps"] == WRITTEN
    md = (killed / "report.md").read_text()
    assert "never closed" in md
    # Still an unclosed run: every call re-diagnoses what is on disk.
    assert not (killed / "findings.json").exists()
    _report(str(killed))
    assert "never closed" in capsys.readouterr().out


def test_report_skips_a_last_line_cut_short_with_a_note(killed, tmp_path, capsys):
    cut = tmp_path / "cut"
    cut.mkdir()
    text = (killed / "timeline.jsonl").read_text()
    (cut / "timeline.jsonl").write_text(text + '{"type":"step","step":51,"sig')
    _report(str(cut), "--json")
    captured = capsys.readouterr()
    assert json.loads(captured.out)["run"]["ended"] == "killed"
    assert "cut short" in captured.err

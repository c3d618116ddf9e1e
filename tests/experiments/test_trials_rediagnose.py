"""`traindoctor report --rediagnose` keeps the fix trials (experiments/trial_record.py): each
trial is a `fix_trial` event of the timeline, re-attached to the finding the rules derive
again, so the re-diagnosed findings.json is the live close's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

import traindoctor as td
from traindoctor import experiments
from traindoctor.cli import cli
from traindoctor.experiments.trial_record import DEMOTE, reattach
from traindoctor.findings import Finding, Severity, Where


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(tmp: Path, opt_class, settings: dict, hand_term: bool = False) -> Path:
    """No zero_grad() (TD106, an error with a fix trial); returns the run directory."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = opt_class(model.parameters(), **settings)
    with experiments.enable(), td.watch(model, opt, out_dir=tmp, console=False) as doc:
        for s in range(30):
            i = s % 8 * 32
            out = model(x[i : i + 32])
            loss = F.cross_entropy(out, y[i : i + 32])
            if hand_term:
                loss = loss + 0.01 * out.pow(2).mean()  # not replayable: said, not run
            loss.backward()  # never zeroed
            opt.step()
    assert not doc.report.internal_errors, doc.report.internal_errors
    return Path(doc.report.run_dir)


def _rediagnosed(run_dir: Path) -> dict:
    live = json.loads((run_dir / "findings.json").read_text())
    result = CliRunner().invoke(cli, ["report", "--rediagnose", "--json", str(run_dir)])
    assert result.exit_code == 0, result.output
    return live, json.loads((run_dir / "findings.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "opt_class, settings, hand_term, verdict",
    [
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, False, "fix helps"),
        (torch.optim.Adam, {"lr": 1e-3}, False, "fix does not help"),
        (torch.optim.SGD, {"lr": 0.05}, True, "not run"),
    ],
    ids=["helps", "does-not-help", "not-run"],
)
def test_rediagnose_gives_the_live_findings(tmp_path, opt_class, settings, hand_term, verdict):
    run_dir = _run(tmp_path, opt_class, settings, hand_term)
    live, again = _rediagnosed(run_dir)
    (trial,) = [f["evidence"]["trial"] for f in live["findings"] if f["code"] == "TD106"]
    assert trial["verdict"].startswith(verdict), trial
    assert again["findings"] == live["findings"]
    events = [
        json.loads(line)
        for line in (run_dir / "timeline.jsonl").read_text().splitlines()
        if '"fix_trial"' in line
    ]
    tried = [f["code"] for f in live["findings"] if "trial" in f["evidence"]]
    assert sorted(e["code"] for e in events) == sorted(tried)


def _finding(code: str, params: tuple[str, ...] = (), priority: int = 10) -> Finding:
    return Finding(
        code=code,
        name=code.lower(),
        severity=Severity.ERROR,
        title="t",
        step=3,
        evidence={},
        where=Where(module="model", params=params),
        cause="because",
        fix="fix it",
        priority=priority,
    )


def _trial(verdict: str) -> dict:
    return {"fix": "f", "verdict": verdict, "steps": 30, "summary": "a -> b", "curves": {}}


def test_reattach_matches_by_key_and_ranks_again():
    a, b = _finding("TD106", ("w",), priority=10), _finding("TD103", ("v",), priority=20)
    events = [
        {"kind": "fix_trial", "code": "TD106", "key": ["TD106", "model", ["w"], None],
         "trial": _trial("fix does not help")},
        # Another place of the same code: not this finding's trial.
        {"kind": "fix_trial", "code": "TD103", "key": ["TD103", "model", ["x"], None],
         "trial": _trial("fix helps")},
    ]  # fmt: skip
    out = reattach(events, [a, b])
    assert [f.code for f in out] == ["TD103", "TD106"]  # the fix that does not help: after
    assert "trial" not in out[0].evidence
    demoted = out[1]
    assert demoted.priority == 10 + DEMOTE and demoted.confidence == 0.5
    assert demoted.cause.startswith("because. Measured on a copy: a -> b (the fix does not help")


def test_no_trial_event_leaves_the_findings_as_they_are():
    findings = [_finding("TD106")]
    assert reattach([], findings) is findings


@pytest.mark.slow
def test_rediagnose_keeps_a_warnings_trial(tmp_path):
    """TD515's trial (a warning, demoted: Adam is scale-invariant) comes back the same."""
    from .test_fix_trials_accumulation import adam_clipped

    with experiments.enable():
        report = adam_clipped(tmp_path)
    live, again = _rediagnosed(Path(report.run_dir))
    (trial,) = [f["evidence"]["trial"] for f in live["findings"] if f["code"] == "TD515"]
    assert trial["verdict"] == "fix does not help"
    assert again["findings"] == live["findings"]

"""End-to-end: every bundled scenario, trained for real with traindoctor attached, in zero-code
mode (global hooks, the script unchanged) and through the `td.watch()` API.

A buggy scenario must get its planted rule as the first ranked finding, at the planted place
(a scenario of the experiments on a copy, TD7xx, run with them on: first among the TD7xx
findings, demo.verdict_finding); its healthy twin must get no error and no warning.
"""

from __future__ import annotations

import time

import pytest
import torch

from traindoctor.findings import Severity
from traindoctor.scenarios import all_scenarios, get
from traindoctor.scenarios.demo import run_scenario, verdict_finding

SCENARIOS = all_scenarios()
BUGGY = [s for s in SCENARIOS if not s.healthy]
HEALTHY = [s for s in SCENARIOS if s.healthy]
# Rules that look at the model/optimizer structure: they must speak in the first steps.
STRUCTURAL = {"TD101", "TD102", "TD103", "TD104", "TD105", "TD110", "TD111"}
MODES = {"zero-code": False, "watch": True}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models are tiny: intra-op threads only add contention on a busy CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _params(scenarios):
    # Each run takes well under a second on one thread, so none is marked slow; mark any
    # scenario added here that takes more than 3 s with pytest.mark.slow.
    return [pytest.param(s, id=s.name) for s in scenarios]


def _run(scenario, tmp_path, watch):
    if scenario.missing:
        pytest.skip(f"{scenario.name} needs {', '.join(scenario.missing)} (not installed)")
    report = run_scenario(scenario, out_dir=tmp_path, watch=watch)
    assert not report.internal_errors, report.internal_errors
    return report


def _flagged(report):
    return [f for f in report.findings if f.severity in (Severity.ERROR, Severity.WARNING)]


def _describe(findings):
    return "\n".join(f"{f.code} {f.severity.value} step={f.step}: {f.title}" for f in findings)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scenario", _params(BUGGY))
def test_buggy_scenario_gets_its_rule_first(scenario, mode, tmp_path):
    if mode not in scenario.modes:
        pytest.skip(f"{scenario.name} is judged in {scenario.modes} only")
    report = _run(scenario, tmp_path, MODES[mode])
    findings = report.findings
    assert findings, f"{scenario.name} ({mode}): no finding at all"
    codes = {f.code for f in findings}
    missing = set(scenario.expect) - codes
    assert not missing, f"{scenario.name} ({mode}): {missing} did not fire\n{_describe(findings)}"
    top = verdict_finding(scenario, findings)  # findings[0]; TD7xx: among the experiments'
    assert top is not None and top.code == scenario.top, (
        f"{scenario.name} ({mode}): expected {scenario.top} first\n{_describe(findings)}"
    )
    where = scenario.where
    if "module" in where:
        assert top.where.module == where["module"], top.where
    if "params_prefix" in where:
        assert top.where.params, top.where
        assert all(p.startswith(where["params_prefix"]) for p in top.where.params), top.where
    if "source" in where:
        assert top.where.source and where["source"] in top.where.source, top.where
    if top.code in STRUCTURAL:
        assert top.step is not None and top.step <= 3, f"{top.code} only at step {top.step}"
    if scenario.raises is not None:
        assert report.outcome.get("ended") == "exception", report.outcome
        assert scenario.raises.__name__ in report.outcome.get("exception", "")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scenario", _params(HEALTHY))
def test_healthy_scenario_is_silent(scenario, mode, tmp_path):
    report = _run(scenario, tmp_path, MODES[mode])
    flagged = _flagged(report)
    assert not flagged, f"{scenario.name} ({mode}):\n{_describe(flagged)}"
    assert report.outcome.get("ended") == "normal", report.outcome


@pytest.mark.parametrize("scenario", BUGGY, ids=lambda s: s.name)
def test_buggy_scenario_declares_a_healthy_twin(scenario):
    assert scenario.bug, f"{scenario.name} plants a bug but does not say which"
    assert scenario.top in scenario.expect
    assert scenario.twin, f"{scenario.name} has no healthy twin"
    twin = get(scenario.twin)
    assert twin.healthy, f"twin {twin.name} of {scenario.name} expects findings"
    assert twin.raises is None


def test_every_gradient_flow_rule_has_a_scenario():
    planted = {s.top for s in BUGGY}
    assert {f"TD1{i:02d}" for i in range(1, 12)} <= planted


@pytest.mark.parametrize("scenario", _params(SCENARIOS))
def test_scenario_runs_as_a_plain_script(scenario):
    """Without traindoctor the script trains (or crashes the way it is meant to), quickly."""
    if scenario.missing:
        pytest.skip(f"{scenario.name} needs {', '.join(scenario.missing)} (not installed)")
    t0 = time.perf_counter()
    if scenario.raises is not None:
        with pytest.raises(scenario.raises):
            scenario.train(steps=scenario.steps)
    else:
        scenario.train(steps=scenario.steps)
    assert time.perf_counter() - t0 < 10

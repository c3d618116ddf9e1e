"""The bundled scenarios as a catalog of buggy/healthy pairs, kept by rule family (issue 14:
"a rule's parts within reach"). Static: reads the scenarios' metadata, trains nothing.

- every rule of severity warning or error has a buggy scenario where it is the top finding,
  with a healthy twin (the rules that have none are listed below, each with its reason);
- a pair is one training function with a `bug` flag: the buggy scenario and its twin run the
  same function;
- a scenario module lives in the folder of its rule family and its file name starts with the
  code(s) it plants (`grad_flow/td106_...py`); healthy-only modules are named `healthy_...`.
"""

from __future__ import annotations

import functools
import re

import pytest

from traindoctor.findings import Severity
from traindoctor.rules import all_rules
from traindoctor.scenarios import (
    FAMILIES,
    JOB_FAMILIES,
    all_scenarios,
    job_scenarios,
    scenario_modules,
)

FAMILY_OF_DIGIT = {
    "1": "grad_flow",
    "2": "numerics",
    "3": "loss_path",
    "4": "eval_hygiene",
    "5": "setup",
    "6": "distributed",
    "7": "experiments",
}
# Warning/error rules with no buggy scenario where they are the top finding, and why. This list
# may only shrink: an entry whose rule gets such a scenario fails the test until removed.
NO_PAIR = {
    # Fires on the same divergence as TD206 (lr_too_large expects both); the exploding gradient
    # is the root cause and ranks first, so TD210 is never the top finding of a planted bug.
    "TD210": "always ranked after TD206 on the divergence it reports",
}
PACKAGE = "traindoctor.scenarios"
# The torchrun jobs (scenarios/distributed/, run by tests/distributed/test_td60x_jobs.py) pair
# their rules as the single-process scenarios do.
JOBS = job_scenarios()
MODULES = scenario_modules() + [
    (m, tuple(s for mm, s in JOBS if mm == m)) for m in dict.fromkeys(m for m, _ in JOBS)
]
SCENARIOS = all_scenarios() + [s for _, s in JOBS]
BY_NAME = {s.name: s for s in SCENARIOS}
RULES = all_rules()
JUDGED = [r for r in RULES if r.severity in (Severity.WARNING, Severity.ERROR)]


def _function(train):
    """The training function behind a scenario's `train` (a `partial` that sets `bug`)."""
    while isinstance(train, functools.partial):
        train = train.func
    return train


def _paired_tops() -> set[str]:
    tops = set()
    for s in SCENARIOS:
        twin = BY_NAME.get(s.twin or "")
        if not s.healthy and twin is not None and twin.healthy:
            tops.add(s.top)
    return tops


@pytest.mark.parametrize("rule", JUDGED, ids=lambda r: r.code)
def test_every_warning_or_error_rule_has_a_pair_where_it_is_top(rule):
    paired = rule.code in _paired_tops()
    if rule.code in NO_PAIR:
        assert not paired, f"{rule.code} now has a pair: remove it from NO_PAIR"
    else:
        assert paired, (
            f"{rule.code} ({rule.name}) has no buggy scenario with top={rule.code!r} and a "
            "healthy twin: add one to scenarios/, or to NO_PAIR with the reason"
        )


def test_no_pair_allowlist_names_warning_or_error_rules():
    assert set(NO_PAIR) <= {r.code for r in JUDGED}


def test_scenario_names_are_unique():
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if not s.healthy], ids=lambda s: s.name)
def test_buggy_scenario_and_its_twin_run_one_function(scenario):
    twin = BY_NAME[scenario.twin]
    assert _function(scenario.train) is _function(twin.train), (
        f"{scenario.name} and its twin {twin.name} should be one train(..., bug=...)"
    )


def test_no_flat_scenario_module():
    flat = sorted(name for name, _ in MODULES if name.count(".") == 2)
    assert not flat, f"scenario modules outside a family folder: {flat}"


@pytest.mark.parametrize(
    "module, scenarios",
    [m for m in MODULES if m[0].count(".") == 3],
    ids=[m[0].removeprefix(f"{PACKAGE}.") for m in MODULES if m[0].count(".") == 3],
)
def test_module_lives_in_its_family_folder_named_by_code(module, scenarios):
    folder, filename = module.split(".")[-2:]
    assert folder in FAMILIES or folder in JOB_FAMILIES
    if folder == "seeds":  # a seed report's bugs span families: one module per report
        assert filename.startswith("seed"), module
        return
    tops = {s.top for s in scenarios if not s.healthy}
    prefix = re.match(r"(?:td\d{3}_)*", filename).group(0)
    codes = {c.upper() for c in re.findall(r"td\d{3}", prefix)}
    if not tops:
        assert filename.startswith("healthy_"), f"{module}: a healthy-only module is healthy_..."
        return
    assert prefix, f"{module}: the file name starts with the code it plants (td1xx_...)"
    assert codes == tops, f"{module}: named after {sorted(codes)}, plants {sorted(tops)}"
    wrong = {t for t in tops if FAMILY_OF_DIGIT[t[2]] != folder}
    assert not wrong, f"{module}: {sorted(wrong)} belong in {FAMILY_OF_DIGIT[min(wrong)[2]]}/"

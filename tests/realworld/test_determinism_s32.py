"""The same verdict every time, whatever the load (session 32, H5).

Identical runs must give identical findings however slow the machine: no decision may read a
clock unless its outcome cannot change a finding. Audited in session 32: the sampling schedule
and the mid-run diagnosis passes and folds are decided from counted work (budget.py,
diagnosis_schedule.py); clocks feed only the overhead report (governor.py, the timed sections'
Budget.spend), the `seconds` of experiments' evidence, display cadences (progress, notebook),
run-directory names and a distributed merge's wait for other ranks' files (the last rank to
close rewrites the job's report: eventually the same). Ecosystem programs and healthy styles
run quiet, under two CPU burners, with every clock at a random speed and with another
PYTHONHASHSEED gave the same codes, severities, titles, locations and steps.

These tests would catch a regression: a clock read in a module not listed below, and a run
whose findings change when every clock traindoctor can read (the `time` functions, the
aliases modules took at import, the defaults functions bound) runs at a random speed.
`tests/test_same_verdict.py` slows `time.perf_counter` only, which the aliases taken at import
(`_clock = time.perf_counter` in probes/base.py, steps.py, doctor.py; Budget's and the
Governor's default clocks) never see.
"""

from __future__ import annotations

import ast
import json
import random
import sys
import time
from pathlib import Path

import pytest

from tests.test_same_verdict import _train

SRC = Path(__file__).resolve().parents[2] / "src" / "traindoctor"
CLOCKS = {
    "perf_counter",
    "perf_counter_ns",
    "monotonic",
    "monotonic_ns",
    "time",
    "time_ns",
    "process_time",
    "process_time_ns",
    "thread_time",
    "thread_time_ns",
}
# Where traindoctor reads a clock, and why no finding depends on it.
READS_A_CLOCK = {
    "budget.py": "the governor's clock (overhead report); the schedule is counted work",
    "governor.py": "the overhead report only",
    "doctor.py": "timed sections and attach's cost (overhead report); the run id's suffix",
    "steps.py": "timed sections and a diagnosis pass's time (overhead report)",
    "probes/base.py": "timed hook calls (Budget.spend: overhead report)",
    "probes/capture.py": "timed section (Budget.spend)",
    "probes/loss_inputs.py": "timed section (Budget.spend)",
    "probes/numerics.py": "timed section (Budget.spend)",
    "probes/parts.py": "timed section (Budget.spend)",
    "gradpath.py": "the walk's seconds, reported beside its facts",
    "experiments/recipe.py": "seconds in the experiments' evidence",
    "experiments/runner.py": "seconds in the experiments' evidence",
    "experiments/trials.py": "seconds in the experiments' evidence",
    "report/plots.py": "the plots' own time, reported",
    "report/notebook.py": "how often a notebook's display refreshes",
    "progress.py": "the progress line's elapsed time",
    "scenarios/demo.py": "the demo's printed timings",
    "distributed/merge.py": "waits for other ranks' files; the last rank rewrites the report",
    "integrations/trackers/mlflow_tracker.py": "MLflow's timestamp field",
}


def _clock_reads() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in CLOCKS
                and isinstance(node.value, ast.Name)
                and node.value.id == "time"
            ) or (
                isinstance(node, ast.ImportFrom)
                and node.module == "time"
                and any(a.name in CLOCKS for a in node.names)
            ):
                found.setdefault(rel, []).append(node.lineno)
    return found


def test_clocks_are_read_only_where_no_finding_depends_on_them():
    reads = _clock_reads()
    new = {m: lines for m, lines in reads.items() if m not in READS_A_CLOCK}
    assert not new, (
        f"a clock is read in {new}: a decision taken from it would change findings with the "
        "machine's load. Decide from counted work (budget.py), or add the module to "
        "READS_A_CLOCK with why no finding depends on it."
    )


def _chaotic_clocks(monkeypatch, seed: int = 0) -> None:
    """Every clock traindoctor can read runs at a random, changing speed (still monotonic)."""
    rng = random.Random(seed)
    fakes = {}
    for name in ("perf_counter", "monotonic", "process_time", "thread_time", "time"):
        real = getattr(time, name)
        state = [real(), real()]

        def fake(real=real, state=state) -> float:
            now = real()
            state[1] += (now - state[0]) * rng.choice((0.05, 1.0, 20.0, 300.0)) + 1e-4
            state[0] = now
            return state[1]

        fakes[real] = fake
        monkeypatch.setattr(time, name, fake)

    def swap(value):
        return next((f for r, f in fakes.items() if value is r), value)

    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith("traindoctor") or mod is None:
            continue
        for attr, value in list(vars(mod).items()):
            if swap(value) is not value:  # `_clock = time.perf_counter`
                monkeypatch.setattr(mod, attr, swap(value))
            members = list(vars(value).values()) if isinstance(value, type) else [value]
            for fn in members:  # `clock=time.perf_counter` defaults
                fn = getattr(fn, "__func__", fn)
                defaults = getattr(fn, "__defaults__", None)
                if defaults and any(swap(d) is not d for d in defaults):
                    monkeypatch.setattr(fn, "__defaults__", tuple(swap(d) for d in defaults))


@pytest.mark.slow  # two runs of 160 steps (~3 s of CPU each)
def test_findings_do_not_follow_any_clock(tmp_path, monkeypatch):
    calm = _train(tmp_path, "calm")
    assert calm, "the script must give findings to compare"
    _chaotic_clocks(monkeypatch)
    from traindoctor.budget import Budget
    from traindoctor.probes import base

    assert base._clock is time.perf_counter  # the alias taken at import swapped too
    assert Budget.__init__.__defaults__[-1] is time.perf_counter  # the default clock swapped too
    chaotic = _train(tmp_path, "chaotic")
    assert json.dumps(chaotic, sort_keys=True) == json.dumps(calm, sort_keys=True)

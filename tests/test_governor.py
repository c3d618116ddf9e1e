"""The honest governor (governor.py): the measured ratio from step times, on a fake clock; the
schedule never depends on what the clock says."""

from __future__ import annotations

import itertools
import random
import tempfile

import pytest
import torch

import traindoctor as td
from traindoctor import doctor as doctor_module
from traindoctor.budget import Budget, Work
from traindoctor.bus import Event
from traindoctor.diagnosis_schedule import DiagnosisSchedule
from traindoctor.governor import (
    MEASURES,
    MIN_PLAIN_STEPS,
    UNTIMED_PER_CALL,
    Governor,
    Sample,
    summary_line,
)

TINY = Work(modules=6, tensors=6, elements=2442, activations=2368, flops=8e4)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run(
    budget: Budget, clock: FakeClock, steps: int, plain: float, attach: bool = True
) -> dict[str, float]:
    """Steps of `plain` seconds; traindoctor adds known costs: attach 50 ms; step 1 spends
    20 ms in 10 timed calls; steps 2-3 add 20 ms; sampled steps add 6 ms (2 ms of it timed,
    in 100 calls); unsampled steps spend 0.3 ms in 5 calls (plus their untimed cost)."""
    added = 0.05 if attach else 0.0
    if attach:
        budget.governor.attached(0.05)
    for step in range(1, steps + 1):
        if step <= 3:
            extra = 0.02
            budget.spend(0.02 if step == 1 else 0.015)
            for _ in range(9):
                budget.spend(0.0)
            if step == 1:
                extra += 10 * UNTIMED_PER_CALL
        elif budget.sampled(step):
            extra = 0.006
            budget.spend(0.002)
            for _ in range(99):
                budget.spend(0.0)
        else:
            extra = 0.0003 + 5 * UNTIMED_PER_CALL
            budget.spend(0.0003)
            for _ in range(4):
                budget.spend(0.0)
        added += extra
        clock.now += plain + extra
        if step == 1:
            budget.plan(TINY)
        budget.step_end(step)
    return {"added": added, "plain_total": steps * plain}


def test_the_estimate_is_the_side_by_side_ratio_on_a_fake_clock():
    clock = FakeClock()
    b = Budget(0.03, clock=clock)
    truth = _run(b, clock, 400, plain=0.01)
    est = b.overhead()
    expected = 1 + truth["added"] / truth["plain_total"]
    assert est["ratio"] == pytest.approx(expected, abs=1e-4)
    assert est["plain_step_s"] == pytest.approx(0.01)
    assert est["sampled_step_x"] == pytest.approx(1.6)
    assert est["ratio_low"] <= est["ratio"] <= est["ratio_high"]
    assert not est["noisy"]  # every plain step alike: a zero-width interval
    assert est["steps_by_kind"]["structural"] == 3
    assert sum(est["steps_by_kind"].values()) == 400
    # The cost model's prediction for the same schedule, beside it.
    assert est["predicted_ratio"] > 1 and est["predicted_step_s"] > 0


def test_without_attach_timed_step_1_counts_its_timed_cost_and_a_plain_step():
    clock = FakeClock()
    b = Budget(0.03, clock=clock)
    truth = _run(b, clock, 300, plain=0.02, attach=False)
    assert b.overhead()["ratio"] == pytest.approx(
        1 + truth["added"] / truth["plain_total"], abs=1e-4
    )


def test_irregular_user_steps_leave_the_median_estimate_and_stay_on_both_sides():
    clock = FakeClock()
    b = Budget(0.03, interval=1000, clock=clock)  # no sampled step after the structural ones
    b.governor.attached(0.0)
    rnd = random.Random(0)
    user = added = 0.0
    for step in range(1, 401):
        b.spend(0.0001)
        # The user's own step varies, and one step in 50 validates for 0.5 s.
        own = 0.01 * rnd.uniform(0.5, 1.5) + (0.5 if step % 50 == 7 else 0.0)
        user += own
        added += 0.0001 + UNTIMED_PER_CALL
        clock.now += own + 0.0001 + UNTIMED_PER_CALL
        b.step_end(step)
    est = b.overhead()
    assert est["plain_step_s"] == pytest.approx(0.01, rel=0.1)
    assert est["ratio_low"] <= est["ratio"] <= est["ratio_high"]
    # The validations count on both sides, as in a side-by-side run.
    assert est["ratio"] == pytest.approx(1 + added / user, abs=2e-3)


def test_the_schedule_is_identical_whatever_the_clock_says():
    def schedule(clock: object) -> tuple[list[int], list[int]]:
        b = Budget(0.03, clock=clock)  # type: ignore[arg-type]
        passes = DiagnosisSchedule(b)
        sampled, diagnosed = [], []
        for step in range(1, 3000):
            if b.sampled(step):
                sampled.append(step)
                b.spend(0.05)
            if step == 1:
                b.plan(Work(modules=40, tensors=40, elements=10**6, activations=10**5, flops=1e9))
            if passes.due(step, 5 * step):
                diagnosed.append(step)
                passes.ran(step)
            b.step_end(step)
        return sampled, diagnosed

    ticks = itertools.count()
    rnd = random.Random(1)
    fast = schedule(lambda: next(ticks) * 1e-6)
    slow = schedule(lambda: next(ticks) * 10.0)
    erratic = schedule(lambda: next(ticks) + rnd.uniform(0, 100))
    assert fast == slow == erratic
    assert len(fast[0]) > 10 and len(fast[1]) > 3


def test_a_watched_run_samples_and_diagnoses_the_same_steps_under_any_clock(monkeypatch):
    def run(clock: object) -> tuple[list[tuple[int, bool]], list[str], dict]:
        monkeypatch.setattr(
            doctor_module,
            "Budget",
            lambda budget: Budget(budget, clock=clock),  # type: ignore[arg-type]
        )
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
        with tempfile.TemporaryDirectory() as out:
            doc = td.watch(model, opt, out_dir=out, console=False)
            opened: list[tuple[int, bool]] = []
            doc.bus.subscribe(Event.STEP_OPENED, lambda s, smp, rec: opened.append((s, smp)), "t")
            for _ in range(120):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doc.log(loss=loss)
            report = doc.close()
            overhead = doc.timeline.facts["overhead"]
        assert not report.internal_errors
        return opened, sorted(f.code for f in report.findings), overhead

    ticks = itertools.count()
    rnd = random.Random(2)
    a = run(lambda: next(ticks) * 1e-4)
    b = run(lambda: next(ticks) * 3.0 + rnd.uniform(0, 50))
    assert a[0] == b[0] and a[1] == b[1]
    # The clock shows in the measured figures only.
    assert a[2]["ratio"] != b[2]["ratio"]
    for key in ("seconds_in_traindoctor", "final_sample_interval", "windows", "ratio", "summary"):
        assert key in a[2]
    assert a[2]["predicted_ratio"] == b[2]["predicted_ratio"]


def test_too_short_a_run_reports_no_ratio():
    clock = FakeClock()
    gov = Governor(clock)
    for step in range(1, 3 + MIN_PLAIN_STEPS):
        clock.now += 0.01
        gov.step_end(step, sampled=False, spent=0.0, calls=0)
    assert gov.estimate() == {}
    assert summary_line({"seconds_in_traindoctor": 0.1}) is None


def test_the_samples_stay_bounded_and_decimate_by_count():
    s = Sample(size=8)
    for i in range(10_000):
        s.add(float(i))
    assert len(s.values) < 16
    assert s.values == [float(i) for i in range(0, 10_000, s.stride)][: len(s.values)]
    assert s.median() == pytest.approx(5000, rel=0.1)


def test_the_summary_line_names_measured_and_predicted():
    line = summary_line(
        {
            "ratio": 1.04,
            "ratio_low": 1.02,
            "ratio_high": 1.06,
            "noisy": False,
            "sampled_step_x": 1.6,
            "final_sample_interval": 20,
            "predicted_ratio": 1.03,
            "close_s": 0.5,
        }
    )
    assert line == (
        "measured 1.040x (interval 1.02-1.06; sampled steps 1.60x each, every 20 steps), "
        "predicted 1.030x; close() 0.50 s before writing the report; measured " + MEASURES
    )


def test_the_summary_line_says_what_the_figure_leaves_out():
    # The figure is not a side-by-side measurement: the report says what it holds and what not.
    line = summary_line({"ratio": 1.02, "ratio_low": 1.01, "ratio_high": 1.03})
    assert "step times" in line and "caches" in line and "garbage collection" in line
    assert "waits included" in line and "of a CPU" not in line


def test_the_summary_line_names_the_waits_that_dilute_the_whole_run_figure():
    # A process that got a CPU 30% of the loop's wall time (a shared machine): the whole-run
    # figure divides by those waits, the per-step figure (a median) does not; both are shown.
    overhead = {"ratio": 1.25, "ratio_low": 1.2, "ratio_high": 1.3, "every_step_x": 1.7}
    line = summary_line({**overhead, "loop_cpu_share": 0.3})
    assert "unsampled steps 1.70x each" in line
    assert line.endswith("(the process used 30% of a CPU per second of the loop)")
    assert "of a CPU" not in summary_line({**overhead, "loop_cpu_share": 0.95})


def test_the_loop_cpu_share_is_measured_from_attach_to_the_last_step():
    clock = itertools.count(0.0, 0.01).__next__  # 10 ms a step, whatever the CPU did
    gov = Governor(clock)
    gov.attached(0.0)
    for step in range(1, 30):
        gov.step_end(step, sampled=False, spent=0.0, calls=0)
    share = gov.estimate()["loop_cpu_share"]
    assert share is not None and share >= 0

"""The honest governor (governor.py): the measured ratio from step times, on a fake clock; the
schedule never depends on what the clock says."""

from __future__ import annotations

import itertools
import random
import tempfile

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor import doctor as doctor_module
from traindoctor.budget import Budget, Work
from traindoctor.bus import Event
from traindoctor.diagnosis_schedule import DiagnosisSchedule
from traindoctor.governor import (
    BUSY,
    CALIBRATION_STEPS,
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
    # Each clock read a second or more: the hooks' own timers (real time) stay far under a
    # step's wall on any load.
    a = run(lambda: next(ticks) * 1.0)
    b = run(lambda: next(ticks) * 3.0 + rnd.uniform(0, 50))
    assert a[0] == b[0] and a[1] == b[1]
    # The clock shows in the measured figures only.
    assert a[2]["ratio"] != b[2]["ratio"]
    for key in ("seconds_in_traindoctor", "final_sample_interval", "windows", "ratio", "summary"):
        assert key in a[2]
    # The cost model's counted parts are the same; its calibrated per-entry cost and attach
    # are measured.
    for key in (
        "predicted_step_s",
        "predicted_sampled_step_x",
        "predicted_structural_s",
        "entries_per_step",
    ):
        assert a[2][key] == b[2][key], key


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


def _unsampled_steps(gov: Governor, clock: FakeClock, cpu: FakeClock, steps: list) -> None:
    """Steps 4.. as (plain wall, timed spent, timed calls, seconds waited inside our code)."""
    gov.attached(0.0)
    for step in range(1, 4):
        clock.now += 0.01
        cpu.now += 0.01
        gov.step_end(step, sampled=False, spent=0.0, calls=0)
    for step, (plain, spent, calls, wait) in enumerate(steps, start=4):
        clock.now += plain + spent + calls * UNTIMED_PER_CALL
        cpu.now += plain + spent - wait + calls * UNTIMED_PER_CALL
        gov.step_end(step, sampled=False, spent=spent, calls=calls)


def test_the_every_step_term_is_counted_entries_times_the_calibrated_entry_cost():
    clock, cpu = FakeClock(), FakeClock()
    gov = Governor(clock, cpu_clock=cpu)
    # 18 entries a step; 0.36 ms timed on the first 20 steps, 0.72 ms later (the model keeps
    # the first steps' per-entry cost: a drift shows between measured and predicted).
    steps = [(0.001, 0.00036 if i < CALIBRATION_STEPS else 0.00072, 18, 0.0) for i in range(100)]
    _unsampled_steps(gov, clock, cpu, steps)
    assert gov.calls["unsampled"] == 100 * 18
    assert gov.per_entry_s() == pytest.approx(0.00002 + UNTIMED_PER_CALL)
    plan = {"step_s": 0.001, "sampled_step_s": 0.002, "structural_s": 0.01}
    pred = gov.predicted(plan)
    assert pred["entries_per_step"] == 18
    assert pred["predicted_every_step_s"] == pytest.approx(18 * gov.per_entry_s(), abs=1e-8)
    every = 100 * 18 * gov.per_entry_s()
    assert pred["predicted_extra_s"] == pytest.approx(0.01 + every, abs=1e-4)
    assert pred["predicted_ratio"] == pytest.approx(1 + (0.01 + every) / (103 * 0.001), abs=1e-4)


def test_a_wait_for_the_cpu_inside_our_code_is_not_charged_as_our_cost():
    # One unsampled step in ten is descheduled for 20 ms inside one of our timed sections
    # (a shared machine): the wall and the timer see it, the process's CPU time does not.
    clock, cpu = FakeClock(), FakeClock()
    gov = Governor(clock, cpu_clock=cpu)
    steps = [
        (0.001, 0.0002 + (0.02 if i % 10 == 3 else 0.0), 5, 0.02 * (i % 10 == 3))
        for i in range(200)
    ]
    _unsampled_steps(gov, clock, cpu, steps)
    assert gov.calm[0] == 180
    assert gov.every_step_s() == pytest.approx(0.0002 + 5 * UNTIMED_PER_CALL)
    est = gov.estimate()
    assert est["every_step_x"] == pytest.approx(
        1 + (0.0002 + 5 * UNTIMED_PER_CALL) / 0.001, abs=1e-3
    )
    assert gov.per_entry_s() == pytest.approx(0.0002 / 5 + UNTIMED_PER_CALL)


def test_a_run_that_always_waits_is_charged_its_mean_timed_cost():
    # Device-bound: every step is mostly off the CPU; no step counts as calm, so the mean
    # over all unsampled steps is the cost (what the governor charged before).
    clock, cpu = FakeClock(), FakeClock()
    gov = Governor(clock, cpu_clock=cpu)
    steps = [(0.01, 0.0003, 4, 0.0) for _ in range(50)]
    gov.attached(0.0)
    for step, (plain, spent, calls, _) in enumerate([(0.01, 0, 0, 0)] * 3 + steps, start=1):
        clock.now += plain + spent
        cpu.now += spent  # only our code on the CPU
        gov.step_end(step, sampled=False, spent=spent, calls=calls)
    assert gov.calm[0] == 0
    assert gov.every_step_s() == pytest.approx(0.0003 + 4 * UNTIMED_PER_CALL)


def test_on_a_shared_cpu_the_waits_for_a_cpu_are_left_out_on_both_sides():
    # A CPU-bound loop on a machine shared with other processes: 7 steps in 10 lose 50 ms
    # waiting for a CPU, in the user's code or inside one of our timed sections. The figure
    # is the side-by-side ratio in CPU time, as if no step had waited.
    clock, cpu = FakeClock(), FakeClock()
    b = Budget(0.03, clock=clock)
    b.governor.cpu_clock = cpu
    b.governor.attached(0.0)
    plain, added = 0.01, 0.0
    for step in range(1, 401):
        if step <= 3:
            ours, calls = 0.002, 10
        elif b.sampled(step):
            ours, calls = 0.006, 100
        else:
            ours, calls = 0.0003, 5
        # (Not step 1: its wall holds the script's setup, so its timed cost is taken as timed.)
        wait = 0.05 if step % 10 < 7 and step > 1 else 0.0
        in_ours = wait if step % 2 else 0.0
        b.spend(ours + in_ours)
        for _ in range(calls - 1):
            b.spend(0.0)
        cost = ours + calls * UNTIMED_PER_CALL
        added += cost
        clock.now += plain + cost + wait
        cpu.now += plain + cost
        if step == 1:
            b.plan(TINY)
        b.step_end(step)
    est = b.overhead()
    assert est["step_clock"] == "cpu"
    assert est["plain_step_s"] == pytest.approx(plain)
    assert est["every_step_x"] == pytest.approx(1 + (0.0003 + 5 * UNTIMED_PER_CALL) / plain)
    assert est["ratio"] == pytest.approx(1 + added / (400 * plain), abs=2e-3)
    assert summary_line(est).endswith(BUSY)


def test_without_a_calm_step_the_entry_cost_comes_from_all_unsampled_steps():
    clock, cpu = FakeClock(), FakeClock()
    gov = Governor(clock, cpu_clock=cpu)
    gov.attached(0.0)
    for step in range(1, 40):
        clock.now += 0.01
        cpu.now += 0.001  # every step waits
        gov.step_end(step, sampled=False, spent=0.0004, calls=4)
    assert gov.calibration == [0.0, 0]
    assert gov.per_entry_s() == pytest.approx(0.0001 + UNTIMED_PER_CALL)


def test_gradient_accumulation_runs_no_no_step_pass_every_step(tmp_path):
    """8 micro-batches a step: the 8th backward of each step is not a 'no step' checkpoint
    once a step had 8 (one pass and one idle_backward event before the first step only); a
    run whose optimizer then stops still gets its checkpoint further on."""
    from traindoctor.diagnosis_schedule import after_backwards

    assert after_backwards(8, 0) and not after_backwards(8, 8) and not after_backwards(16, 8)
    assert after_backwards(32, 8) and not after_backwards(9, 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = td.watch(model, opt, out_dir=str(tmp_path), console=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        opt.zero_grad()
        for _ in range(8):
            x = torch.randn(16, 8, generator=g)
            (F.cross_entropy(model(x), (x[:, 0] > 0).long()) / 8).backward()
        opt.step()
    doc.close()
    assert len(doc.timeline.events("idle_backward")) == 1


def _no_step_run(tmp_path, accumulate: int, steps: int, stretch: int, after: int = 0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = td.watch(model, opt, out_dir=str(tmp_path), console=False) if tmp_path else None
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            x = torch.randn(16, 8, generator=g)
            (F.cross_entropy(model(x), (x[:, 0] > 0).long()) / accumulate).backward()
        opt.step()
    for _ in range(stretch):  # optimizer.step() lost
        opt.zero_grad()
        x = torch.randn(16, 8, generator=g)
        F.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
    for _ in range(after):  # and found again
        opt.zero_grad()
        x = torch.randn(16, 8, generator=g)
        F.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
        opt.step()
    if doc is None:
        return model
    doc.close()
    doc.trained = model
    return doc


def test_a_stretch_without_steps_pauses_the_per_pass_probes(tmp_path):
    """Backward passes with no optimizer step keep one step open: past TD105's threshold (4x
    the most a step had; 64 before any step) the per-pass probes pause until the step closes,
    so a lost step() or a gradient-based evaluation does not pay a sampled step's work on
    every pass. The probes record what they saw; nothing reads as unavailable or failed."""
    from traindoctor.steps import PER_PASS_PROBES

    doc = _no_step_run(tmp_path / "a", accumulate=4, steps=5, stretch=40)
    (paused,) = doc.timeline.events("probes_paused")
    assert paused["backward_since_step"] == 16 and paused["step"] == 6
    assert not doc.guard.paused and not doc.guard.errors
    assert not PER_PASS_PROBES & doc.guard.disabled
    assert "TD105" in {f.code for f in doc.findings}
    # Before any step: only at the 64th backward pass (a long accumulation is not cut short).
    doc = _no_step_run(tmp_path / "b", accumulate=1, steps=0, stretch=70)
    (paused,) = doc.timeline.events("probes_paused")
    assert paused["backward_since_step"] == 64 and paused["step"] == 1
    # The training goes on after the stretch exactly as without traindoctor.
    doc = _no_step_run(tmp_path / "d", accumulate=1, steps=3, stretch=20, after=5)
    assert len(doc.timeline.events("probes_paused")) == 1
    plain = _no_step_run(None, accumulate=1, steps=3, stretch=20, after=5)
    for a, b in zip(doc.trained.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    # Gradient accumulation of 8 never pauses.
    doc = _no_step_run(tmp_path / "c", accumulate=8, steps=12, stretch=0)
    assert not doc.timeline.events("probes_paused")

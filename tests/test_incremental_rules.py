"""Incremental rule passes (issue 15): series read without re-sorting, records read since a step,
and rules that keep state between passes give the findings of a fresh pass."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from tests.rules._loss_inputs_tl import SUPERVISED_CE
from traindoctor._guard import Guard
from traindoctor.diagnosis import diagnose
from traindoctor.rules import get_rule
from traindoctor.rules._incremental import LowerBound, SortedWindow
from traindoctor.testing import make_timeline, run_rule
from traindoctor.timeline import Timeline


def test_series_in_step_order_whatever_the_write_order():
    tl = Timeline()
    for s in (1, 2, 5):
        tl.record(s, "optim.step", s)
    assert tl.series("optim.step") == [(1, 1), (2, 2), (5, 5)]
    assert tl.rewrites("optim.step") == 0
    tl.record(3, "optim.step", 3)  # out of order: sorted once, on read
    assert tl.series("optim.step") == [(1, 1), (2, 2), (3, 3), (5, 5)]
    assert tl.rewrites("optim.step") == 1
    tl.record(4, "optim.step", 4)  # the cached order is dropped on the next write
    assert [s for s, _ in tl.series("optim.step")] == [1, 2, 3, 4, 5]
    assert tl.series_since("optim.step", 3) == [(4, 4), (5, 5)]


def test_series_since_reads_only_newer_records():
    tl = Timeline()
    for s in range(1, 11):
        tl.append(s, "loss.backward", float(s))
    assert tl.series_since("loss.backward", 8) == [(9, [9.0]), (10, [10.0])]
    assert tl.series_since("loss.backward", 10) == []
    assert tl.series_since("loss.backward", 0) == tl.series("loss.backward")
    assert tl.series_since("nothing.there", 0) == []
    tl.append(10, "loss.backward", 11.0)  # the newest step may still grow: not a rewrite
    assert tl.rewrites("loss.backward") == 0
    tl.append(9, "loss.backward", 12.0)  # an earlier step changed: readers start over
    assert tl.rewrites("loss.backward") == 1
    assert tl.series("loss.backward")[-2:] == [(9, [9.0, 12.0]), (10, [10.0, 11.0])]


# -- incremental passes give the findings of a fresh pass --------------------------------------

INCREMENTAL = ("TD107", "TD108", "TD109", "TD206", "TD210", "TD514", "TD515")


def _replay(src: Timeline, code: str, every: int) -> list[dict]:
    """Write `src` again step by step, as the probes would (list signals one value at a time,
    events at their step), running `code` with one kept state every `every` writes; the last
    pass's findings."""
    r = get_rule(code)
    state = r.state()
    tl = Timeline()
    tl.facts = dict(src.facts)
    events = sorted(src.events(), key=lambda e: e["step"])
    writes = 0
    for step, signals in src.steps().items():
        while events and events[0]["step"] <= step:
            e = dict(events.pop(0))
            tl.event(e.pop("step"), e.pop("kind"), **e)
        for name, value in signals.items():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(value, list):
                    tl.append(step, name, v)
                else:
                    tl.record(step, name, v)
                writes += 1
                if writes % every == 0:
                    r.run(tl.view(r, strict=True), None, state)
        tl.last_step = step
    for e in events:
        e = dict(e)
        tl.event(e.pop("step"), e.pop("kind"), **e)
    tl.last_step = src.last_step
    return [f.to_dict() for f in r.run(tl.view(r, strict=True), None, state)]


def _fresh(src: Timeline, code: str) -> list[dict]:
    return [f.to_dict() for f in run_rule(code, src)]


def _supervised(
    n: int, seed: int, *, spike_at=None, diverge_at=None, jump_at=None, micro=1, flat=False
):
    """A long supervised run: a falling, noisy loss (`micro` backward losses a step), the grad
    and weight norms of two layers sampled every 10 steps; optionally a loss spike, a
    divergence, a gradient jump, a loss that does not fall."""
    rng = random.Random(seed)
    steps: dict[int, dict] = {}
    for s in range(1, n + 1):
        level = 2.0 if flat else 0.3 + 2.0 * math.exp(-s / (n / 5))
        if diverge_at and s >= diverge_at:
            level *= 1.02 ** (s - diverge_at)
        losses = [level * (1 + 0.2 * rng.uniform(-1, 1)) for _ in range(micro)]
        if s == spike_at:
            losses = [20.0 * level] * micro
        row = steps[s] = {"loss.backward": losses, "optim.lr": {"opt0/group0": 0.1}}
        row["loss.train"] = [sum(losses) / micro]
        if s <= 3 or s % 10 == 0:
            head = 0.5 * (1 + 0.1 * rng.uniform(-1, 1)) * (30.0 if s == jump_at else 1.0)
            row["grads.norm"] = {"enc.weight": 0.4, "enc.bias": 0.0, "head.weight": head}
            row["params.norm"] = {"enc.weight": 3.0, "head.weight": 2.0}
            row["loss_inputs.observed"] = [0]
            row["loss_inputs.stats"] = {"0.loss": losses[-1], "0.t_min": 0.0, "0.t_max": 2.0}
    return make_timeline(
        params=["enc.weight", "enc.bias", "head.weight"], steps=steps, events=[SUPERVISED_CE]
    )


LONG = {
    "healthy": dict(n=3000, seed=0),
    "spike": dict(n=3000, seed=1, spike_at=2200),
    "diverges": dict(n=2000, seed=2, diverge_at=1800),
    "jump": dict(n=2000, seed=3, jump_at=1500, micro=3),
    "flat": dict(n=2000, seed=5, flat=True, micro=2),
}


@pytest.mark.parametrize("code", INCREMENTAL)
@pytest.mark.parametrize("case", sorted(LONG))
def test_incremental_passes_match_a_fresh_pass_on_long_runs(code, case):
    src = _supervised(**LONG[case])
    fresh = _fresh(src, code)
    assert _replay(src, code, every=997) == fresh
    if code == "TD210" and case in ("spike", "diverges"):
        assert fresh, "the long run's planted fault is found"
    if code == "TD206" and case == "jump":
        assert fresh and fresh[0]["step"] == 1500
    if code == "TD108" and case != "flat":
        assert not fresh


@pytest.mark.parametrize("code", INCREMENTAL)
def test_incremental_passes_match_a_fresh_pass_on_short_runs(code):
    # passes after nearly every write: the newest step still being written on most of them
    for case in LONG.values():
        src = _supervised(**{**case, "n": 120, "spike_at": 90, "jump_at": 60})
        assert _replay(src, code, every=3) == _fresh(src, code)


@pytest.mark.parametrize("per_step", [1, 3])
def test_a_long_loss_that_does_not_fall_td108(per_step):
    from tests.rules.test_td108_loss_not_decreasing import _flat
    from tests.rules.test_td108_loss_not_decreasing import _tl as td108_timeline

    src = td108_timeline(_flat(3000), per_step=per_step)
    fresh = _fresh(src, "TD108")
    assert fresh and fresh[0]["severity"] == "warning"
    assert _replay(src, "TD108", every=613) == fresh


@pytest.mark.parametrize(
    "odd_at",
    [None, 1, 2500, 2999, 3000],  # never, the first step, mid-run, the step before last, the last
)
def test_td109_goes_on_from_the_factors_it_counted(odd_at):
    from tests.rules.test_td109_accumulation_scaling_inconsistent import _tl as td109_timeline

    steps = [[0.25] * 4 for _ in range(3000)]
    if odd_at is not None:
        steps[odd_at - 1][0] = 1.0  # one micro-batch not divided
    src = td109_timeline(steps)
    fresh = _fresh(src, "TD109")
    assert bool(fresh) == (odd_at is not None)
    assert _replay(src, "TD109", every=1009) == fresh
    if odd_at in (None, 2999):  # passes between micro-batches too (cheap while all agree)
        assert _replay(src, "TD109", every=3) == fresh


def test_a_rewritten_step_sends_the_rule_back_to_a_fresh_state():
    src = _supervised(n=400, seed=4)
    r = get_rule("TD210")
    state = r.state()
    r.run(src.view(r), None, state)
    src.record(200, "loss.backward", [50.0])  # an earlier step changed
    src.record(200, "loss.train", [50.0])
    assert [f.to_dict() for f in r.run(src.view(r), None, state)] == _fresh(src, "TD210")


def test_sorted_window_and_lower_bound_against_a_sort(monkeypatch):
    monkeypatch.setattr(SortedWindow, "LOAD", 4)  # many blocks, splits and empty blocks
    rng = random.Random(0)
    window, low, held, seen = SortedWindow(), LowerBound(), [], []
    for _ in range(3000):
        if held and rng.random() < 0.45:
            x = rng.choice(held)
            held.remove(x)
            window.remove(x)
        else:
            x = rng.choice([rng.random(), float(rng.randint(0, 5)), -0.0, 0.0])
            held.append(x)
            window.add(x)
            low.add(x)
            seen.append(x)
        if held:
            assert window.median() == statistics.median(held)
        k = (len(seen) + 9) // 10
        exact = sorted(seen)[k - 1]
        bound = low.kth(k)
        assert bound <= exact and (exact <= 0 or bound >= exact / 1.0101)
    assert list(window) == sorted(held)


def test_diagnose_goes_on_from_the_kept_states():
    """The live Doctor's passes (diagnosis.diagnose on one growing timeline) end with a fresh
    pass's findings, for the incremental rules and the others alike."""
    src = _supervised(n=1500, seed=6, spike_at=1200)
    rules = [get_rule(c) for c in ("TD107", "TD108", "TD206", "TD210")]
    expected = [f.to_dict() for f in diagnose(src, rules, Guard())]
    assert any(f["code"] == "TD210" for f in expected)
    tl = Timeline()
    tl.facts = dict(src.facts)
    for e in src.events():
        e = dict(e)
        tl.event(e.pop("step"), e.pop("kind"), **e)
    guard = Guard()
    for step, signals in src.steps().items():
        for name, value in signals.items():
            tl.record(step, name, value)
        tl.last_step = step
        if step % 250 == 0:
            diagnose(tl, rules, guard)
    assert [f.to_dict() for f in diagnose(tl, rules, guard)] == expected
    assert not guard.errors


def test_a_pass_that_raises_is_recorded_and_the_next_starts_afresh(monkeypatch):
    from traindoctor.rules import _loss_scan

    src = _supervised(n=600, seed=7, spike_at=500)
    rules = [get_rule("TD210")]
    expected = [f.to_dict() for f in diagnose(src, rules, Guard())]
    tl = _supervised(n=600, seed=7, spike_at=500)
    diagnose(tl, rules, Guard())  # a state kept for this timeline
    read = _loss_scan.LossScan.read

    def broken(self, *args, **kwargs):
        read(self, *args, **kwargs)  # half updated, then fails
        raise RuntimeError("boom")

    monkeypatch.setattr(_loss_scan.LossScan, "read", broken)
    guard = Guard()
    assert diagnose(tl, rules, guard) == []
    assert [e.to_dict()["where"] for e in guard.errors] == ["rule TD210"]
    monkeypatch.setattr(_loss_scan.LossScan, "read", read)
    assert [f.to_dict() for f in diagnose(tl, rules, Guard())] == expected


# -- every step, every 50 steps, once at close: the same findings -------------------------------


def _replay_steps(src: Timeline, code: str, every: int | None) -> list[dict]:
    """`src` written again step by step (list signals a value at a time, events at their
    step), `code` run with one kept state at the end of every `every`-th step (None: once, at
    close); the last pass's findings."""
    r = get_rule(code)
    state = r.state() if r.state is not None else None  # a stateless rule reads it all
    tl = Timeline()
    tl.facts = dict(src.facts)
    events = sorted(src.events(), key=lambda e: e["step"])
    for i, (step, signals) in enumerate(src.steps().items(), 1):
        while events and events[0]["step"] <= step:
            e = dict(events.pop(0))
            tl.event(e.pop("step"), e.pop("kind"), **e)
        for name, value in signals.items():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(value, list):
                    tl.append(step, name, v)
                else:
                    tl.record(step, name, v)
        tl.last_step = step
        if every is not None and i % every == 0:
            r.run(tl.view(r, strict=True), None, state)
    for e in events:
        e = dict(e)
        tl.event(e.pop("step"), e.pop("kind"), **e)
    tl.last_step = src.last_step
    return [f.to_dict() for f in r.run(tl.view(r, strict=True), None, state)]


def _constant_train_loss(n=1200, at=700, length=60):
    """A falling loss, bit-identical (clamped) on `length` steps from `at`; zero gradients
    there."""
    rng = random.Random(11)
    steps = {}
    for s in range(1, n + 1):
        v = 15.0 if at <= s < at + length else 2.0 * math.exp(-s / 400) * (1 + 0.1 * rng.random())
        steps[s] = {"loss.backward": [v], "optim.step": 1}
        if s % 10 == 0:
            zero = at <= s < at + length
            steps[s]["grads.norm"] = {"w": 0.0 if zero else 0.3}
    return make_timeline(params=["w"], steps=steps)


def _constant_validation(n=1200, every=50, frozen_from=600):
    """A validation loss every `every` steps, bit-identical from step `frozen_from` on while the
    params keep moving (an EMA copy never updated)."""
    rng = random.Random(12)
    steps = {}
    for s in range(1, n + 1):
        steps[s] = {"loss.train": [1.0 + rng.random()], "optim.step": 1}
        if s % 10 == 0:
            steps[s]["params.update"] = {"w": 0.01}
        if s % every == 0:
            steps[s]["loss.val"] = [0.75 if s >= frozen_from else 1.0 + rng.random()]
    return make_timeline(params=["w"], steps=steps)


def _decayed_gains(n=1000, shrink=True):
    from tests.rules.test_td514_weight_decay_on_norms import PARAMS
    from tests.rules.test_td514_weight_decay_on_norms import _tl as td514_timeline

    tl = td514_timeline([(PARAMS, 1e-2)], [2.0 * (0.9995**s if shrink else 1.0) for s in range(n)])
    # sampled norms: every 10th step only (lrs every step)
    thinned = Timeline()
    thinned.facts = tl.facts
    for e in tl.events():
        e = dict(e)
        thinned.event(e.pop("step"), e.pop("kind"), **e)
    for step, signals in tl.steps().items():
        for name, value in signals.items():
            if name != "params.norm" or step % 10 in (0, 1):
                thinned.record(step, name, value)
    thinned.last_step = tl.last_step
    return thinned


def _accumulation(n=600, factors=(1.0,) * 4, cls="SGD"):
    from tests.rules.test_td515_grad_accumulation_unnormalized import _tl as td515_timeline

    return td515_timeline(list(factors), cls=cls, n_steps=n)


def _batch_divisors(n=1500, odd_at=None):
    """`loss_sum / n_tokens` with a token count that changes every step (a divisor from the
    batch: many distinct factors), optionally one step scaled by another constant."""
    from tests.rules.test_td109_accumulation_scaling_inconsistent import _tl as td109_timeline

    if odd_at is None:
        return td109_timeline([[1 / (100 + s % 37)] * 2 for s in range(n)])
    return td109_timeline([[0.25, 1.0] if s == odd_at else [1.0, 1.0] for s in range(1, n + 1)])


STEP_CASES = {
    "TD107 train": ("TD107", _constant_train_loss, True),
    "TD107 validation": ("TD107", _constant_validation, True),
    "TD107 healthy": ("TD107", lambda: _supervised(n=1500, seed=13), False),
    "TD514 shrinks": ("TD514", _decayed_gains, True),
    "TD514 holds": ("TD514", lambda: _decayed_gains(shrink=False), True),
    "TD515 summed": ("TD515", _accumulation, True),
    "TD515 no accumulation": ("TD515", lambda: _accumulation(factors=(1.0,)), False),
    "TD515 divided": ("TD515", lambda: _accumulation(factors=(0.25,) * 4), False),
    "TD109 batch divisors": ("TD109", _batch_divisors, False),
    "TD109 one odd step": ("TD109", lambda: _batch_divisors(odd_at=1300), True),
    "TD206 jump": ("TD206", lambda: _supervised(n=1500, seed=3, jump_at=1200, micro=2), True),
}


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_passes_every_step_every_50_steps_or_at_close_agree(case):
    code, build, fires = STEP_CASES[case]
    src = build()
    fresh = _fresh(src, code)
    assert bool(fresh) == fires, fresh
    for every in (1, 50, None):
        assert _replay_steps(src, code, every) == fresh, every


# Real timelines: a bundled scenario trained under td.watch, its timeline replayed.
SCENARIO_CASES = [
    ("batches_class_sorted", "TD512"),
    ("labels_one_based", "TD511"),
    ("loss_nll_log_relu", "TD509"),
    ("loss_double_softmax", "TD506"),
    ("loss_mse_broadcast", "TD508"),
    ("loss_ce_single_logit", "TD507"),
    ("weight_decay_on_norms", "TD514"),
    ("accum_loss_not_divided", "TD515"),
    ("loss_clamped", "TD107"),
    ("seed002_debug_scaling", "TD109"),
    ("lr_too_large", "TD206"),
    ("lr_multistep_epochs_per_batch", "TD503"),
    ("lr_sched_steps_on_amp_skips", "TD503"),
    ("deep_sigmoid_mlp", "TD207"),
    ("zero_grad_missing", "TD106"),
    ("hand_sgd_no_zero_grad", "TD106"),
]


@pytest.mark.parametrize(("scenario", "code"), SCENARIO_CASES)
def test_passes_on_a_real_timeline_agree(scenario, code, tmp_path):
    import torch

    from traindoctor.scenarios import get
    from traindoctor.scenarios.demo import run_scenario

    torch.set_num_threads(1)
    src = run_scenario(get(scenario), out_dir=tmp_path, watch=True).timeline
    fresh = _fresh(src, code)
    assert fresh, f"{code} fires on {scenario}"
    for every in (1, 50, None):
        assert _replay_steps(src, code, every) == fresh, every

"""TD503 lr-schedule-anomaly on hand-built timelines.

The rule's parts (issue 14: "TD503 lives in six places"); its docs point back here:
- the rule and its private helpers: src/traindoctor/rules/setup/lr_schedule_anomaly.py (its
  docstring is `traindoctor explain TD503`), optimizer_source from rules/_util.py;
- the probes that feed it: src/traindoctor/probes/schedule.py (the `lr_scheduler` events and
  `schedule.steps`, from its LRScheduler.step patch), probes/optim.py (`optim.lr`, `optim.step`),
  probes/amp.py (`amp.skipped`); tests/probes/test_schedule.py;
- the scenarios that expect TD503 and their healthy twins (src/traindoctor/scenarios/: an epoch
  schedule stepped per batch or per micro-batch, a cosine past T_max, stepping on AMP-skipped
  steps), run by tests/scenarios/test_scenarios.py;
- real runs: tests/generality/test_schedules.py; the ecosystem mutant
  lightning-fabric-mnist::scheduler-stepped-per-batch;
- docs: README.md's rule table, ../shared/DESIGN.md's rule list.
"""

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _tl(lrs, events=(), sched_steps=None, stepped=None):
    steps = {}
    for i, lr in enumerate(lrs, start=1):
        steps[i] = {
            "optim.lr": {"opt0/group0": lr},
            "optim.step": 1 if stepped is None else stepped[i - 1],
        }
        if sched_steps is not None:
            steps[i]["schedule.steps"] = {"sched0": sched_steps[i - 1]}
        if stepped is not None and not stepped[i - 1]:
            steps[i]["amp.skipped"] = 1  # a GradScaler skipped this step
    return make_timeline(params=["w"], steps=steps, events=events, ended=True)


def _sched(cls, **settings):
    return {
        "kind": "lr_scheduler",
        "step": 1,
        "key": "sched0",
        "cls": cls,
        "optimizer": "opt0",
        "settings": settings,
        "source": "train.py:30",
    }


def test_lr_zero_most_of_the_run_is_an_error():
    f = assert_fires("TD503", _tl([0.0] * 20 + [0.1] * 4))
    assert f.severity.value == "error"
    assert f.evidence["cases"][0]["kind"] == "zero"
    assert f.evidence["lr_trace"][0] == [1, 0.0]


def test_epoch_schedule_stepped_per_batch_collapses():
    lrs = [0.1 * 0.1 ** (i // 2) for i in range(30)]  # StepLR(step_size=2) per batch
    f = assert_fires("TD503", _tl(lrs, events=[_sched("StepLR", step_size=2, gamma=0.1)]))
    assert f.evidence["cases"][0]["kind"] == "collapse"
    assert f.evidence["scheduler"]["class"] == "StepLR"
    assert f.where.source == "train.py:30"


def test_cosine_past_t_max_cycles():
    import math

    lrs = [0.05 * (1 + math.cos(math.pi * (i % 8) / 4)) / 2 for i in range(40)]
    f = assert_fires(
        "TD503", _tl(lrs, events=[_sched("CosineAnnealingLR", T_max=4)], sched_steps=[1] * 40)
    )
    assert f.evidence["cases"][0]["kind"] == "cosine_restarts"
    assert f.evidence["cases"][0]["cycles"] == 5.0


def test_scheduler_ahead_of_optimizer():
    f = assert_fires("TD503", _tl([0.1] * 20, events=[_sched("LambdaLR")], sched_steps=[4] * 20))
    case = f.evidence["cases"][0]
    assert case["kind"] == "ahead_of_optimizer"
    assert case["scheduler_steps"] == 80 and case["optimizer_steps"] == 20


def test_scheduler_stepping_through_skipped_amp_steps():
    stepped = [0 if i % 3 == 0 else 1 for i in range(30)]
    f = assert_fires(
        "TD503", _tl([0.1] * 30, events=[_sched("LambdaLR")], sched_steps=[1] * 30, stepped=stepped)
    )
    assert f.evidence["cases"][0]["optimizer_steps"] == 20
    assert "stepped on the 10 steps the GradScaler skipped" in f.title


def test_healthy_schedules_are_silent():
    import math

    n = 60
    cosine = [0.1 * (1 + math.cos(math.pi * i / n)) / 2 for i in range(n)]  # T_max = run
    assert_silent(
        "TD503", _tl(cosine, events=[_sched("CosineAnnealingLR", T_max=n)], sched_steps=[1] * n)
    )
    warmup = [0.0] + [0.1 * min(1.0, i / 5) for i in range(1, n)]  # starts at 0, rises
    assert_silent("TD503", _tl(warmup, events=[_sched("LambdaLR")], sched_steps=[1] * n))
    per_epoch = [0.1 * 0.5 ** (i // 20) for i in range(n)]  # StepLR per epoch: 3 epochs
    assert_silent(
        "TD503",
        _tl(
            per_epoch,
            events=[_sched("StepLR", step_size=1, gamma=0.5)],
            sched_steps=[1 if i % 20 == 19 else 0 for i in range(n)],
        ),
    )
    assert_silent("TD503", _tl([1e-7] * n))  # tiny but constant: not a schedule anomaly


def test_too_few_steps_is_silent():
    assert_silent("TD503", _tl([0.0] * 4))

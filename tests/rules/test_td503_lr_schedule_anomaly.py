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


def _groups(lrs_by_group):
    n = len(next(iter(lrs_by_group.values())))
    steps = {
        i: {"optim.lr": {g: lrs[i - 1] for g, lrs in lrs_by_group.items()}, "optim.step": 1}
        for i in range(1, n + 1)
    }
    return make_timeline(params=["w"], steps=steps, ended=True)


def test_a_group_built_with_lr_zero_beside_one_that_trains_is_info():
    # AdamW([{'params': backbone, 'lr': 0.0}, {'params': head}], lr=3e-3): a freeze
    f = assert_fires("TD503", _groups({"opt0/group0": [0.0] * 40, "opt0/group1": [3e-3] * 40}))
    assert f.severity.value == "info" and f.evidence["cases"][0]["kind"] == "zero_frozen_group"
    # a group a schedule brought to 0, or lr 0 with nothing else training: still the error
    decayed = [3e-3] * 4 + [0.0] * 36
    f = assert_fires("TD503", _groups({"opt0/group0": decayed, "opt0/group1": [3e-3] * 40}))
    assert f.severity.value == "error"
    f = assert_fires("TD503", _groups({"opt0/group0": [0.0] * 40, "opt0/group1": [0.0] * 40}))
    assert f.severity.value == "error"


def test_too_few_steps_is_silent():
    assert_silent("TD503", _tl([0.0] * 4))


# -- StepLR sized in epochs, stepped per batch, on a run too short for the lr to collapse --------
def _loader(n=1216, batch=32, **over):
    return {
        "kind": "data_loader",
        "step": 1,
        "name": "train_iter",
        "batch_size": batch,
        "dataset_len": n,
        "drop_last": False,
        **over,
    }


def _step_lr(steps, size=10, gamma=0.95, per_batch=True, loaders=None, passes=1, epoch=38):
    lrs = [1e-3 * gamma ** (i // size if per_batch else i // epoch) for i in range(steps)]
    sched = [1] * steps if per_batch else [1 if i % epoch == epoch - 1 else 0 for i in range(steps)]
    loaders = [_loader()] if loaders is None else loaders
    events = [_sched("StepLR", step_size=size, gamma=gamma), *loaders]
    tl = _tl(lrs, events=events, sched_steps=sched)
    for s in range(1, steps + 1):
        tl.record(s, "backward.count", passes)
    return tl


def test_step_lr_decaying_within_every_epoch_is_info():
    # hazdzz/stgcn#18: StepLR(step_size=10, gamma=0.95) per batch, 3 epochs of 38 batches.
    # Info: an iteration-sized StepLR stepped per batch on purpose measures the same.
    f = assert_fires("TD503", _step_lr(114))
    assert f.severity.value == "info"
    case = f.evidence["cases"][0]
    assert case["kind"] == "step_per_batch" and case["decays_per_epoch"] == 3.8
    assert case["lr_after_first_epoch"] == 1e-3 * 0.95**3
    assert case["lr_last"] == 1e-3 * 0.95**11
    assert "3.8 times an epoch of 38 steps" in f.title and "once per epoch" in f.fix


def test_step_lr_a_trainer_steps_per_step_as_configured_is_info():
    # Lightning's {'interval': 'step'}: stepping per step was chosen, not a misplaced call
    tl = _step_lr(114)
    tl.facts["framework"] = "lightning"
    assert assert_fires("TD503", tl).severity.value == "info"


def test_step_lr_decaying_once_or_so_an_epoch_is_info():
    f = assert_fires("TD503", _step_lr(114, size=25))
    assert f.severity.value == "info" and f.evidence["cases"][0]["decays_per_epoch"] == 1.52


def test_an_epoch_counts_optimizer_steps_under_accumulation():
    # 38 batches, 2 backward passes a step: 19 optimizer steps an epoch, 1.9 decays
    f = assert_fires("TD503", _step_lr(60, passes=2))
    assert f.severity.value == "info" and f.evidence["cases"][0]["epoch_steps"] == 19


def test_step_lr_per_batch_that_cannot_be_told_is_silent():
    assert_silent("TD503", _step_lr(60))  # under two epochs: a run sized in steps
    assert_silent("TD503", _step_lr(114, size=38))  # a step_size of an epoch or more
    assert_silent("TD503", _step_lr(114, per_batch=False))  # stepped once per epoch
    # loaders of two lengths (which one the loop iterates is not known), or of no length
    two = [_loader(), _loader(n=640)]
    assert_silent("TD503", _step_lr(114, loaders=two))
    assert_silent("TD503", _step_lr(114, loaders=[_loader(batch=None)]))
    assert_silent("TD503", _step_lr(114, loaders=[]))


def test_an_epoch_is_what_the_sampler_yields():
    # DistributedSampler(num_replicas=4) / WeightedRandomSampler(num_samples=N/4): the loader
    # yields 10 batches an epoch from a data set of 1216 (38 batches): a StepLR(step_size=20)
    # per batch decays every 2 epochs, not 1.9 times an epoch
    assert_silent("TD503", _step_lr(114, size=20, loaders=[_loader(batches=10)]))
    assert_fires("TD503", _step_lr(114, size=20, loaders=[_loader()]))  # 38 batches: judged


def test_a_batch_sampler_loader_is_judged_on_its_length():
    # batch_size=None (a batch_sampler) but len(loader) = 38
    f = assert_fires("TD503", _step_lr(114, loaders=[_loader(batch=None, batches=38)]))
    assert f.evidence["cases"][0]["epoch_batches"] == 38


def test_a_loader_of_no_length_is_silent():
    # an IterableDataset: the probe records batches=None whatever its dataset_len says
    assert_silent("TD503", _step_lr(114, loaders=[_loader(batches=None)]))


def test_collapse_from_a_loss_given_as_the_epoch_names_that_cause():
    # pytorch/pytorch#20527: MultiStepLR([30, 50, 80]).step(loss) with a loss of 387
    lrs = [1e-3] * 16 + [1e-6] * 176
    arg = {"kind": "scheduler_epoch_arg", "step": 16, "key": "sched0", "value": 386.76}
    events = [_sched("MultiStepLR", milestones=[30, 50, 80], gamma=0.1), {**arg, "whole": False}]
    f = assert_fires("TD503", _tl(lrs, events=events))
    assert "was given a value (386.8, not an epoch count)" in f.cause
    assert "stepped per batch" not in f.cause and "no argument" in f.fix
    # a whole epoch number (scheduler.step(epoch)) keeps the usual cause
    events[1] = {**arg, "value": 3.0, "whole": True}
    f = assert_fires("TD503", _tl(lrs, events=events))
    assert "stepped per batch" in f.cause

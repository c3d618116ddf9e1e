"""TD606 step-without-grad-sync on hand-built job timelines; the real 2-rank jobs (no_sync()
around the step's micro-batch, the correct twin, accumulation without no_sync):
tests/distributed/test_td60x_jobs.py."""

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

SRC = "train.py:42"


def _fp(v):
    return {"module.w#2": v, "module.w#1": 2 * v}


def _job(sync, fps, wrappers=1, ranks=("0", "1"), last=8):
    ddp = {r: {f"m{i}": {"kind": "ddp"} for i in range(wrappers)} for r in ranks}
    steps = {0: {"job.ranks": {r: {"last_step": last} for r in ranks}, "job.ddp": ddp}}
    for s, by_rank in sync.items():
        steps.setdefault(s, {})["job.sync"] = by_rank
    for s, by_rank in fps.items():
        steps.setdefault(s, {})["job.param_fp"] = by_rank
    return make_timeline(params=["module.w"], steps=steps, last_step=last)


def _unsynced(steps, ranks=("0", "1")):
    rec = {"synced": 1, "unsynced": 1, "backwards": 2, "last": False, "source": SRC}
    return {s: {r: dict(rec) for r in ranks} for s in steps}


def _fps(drift_from=None, steps=(1, 2, 3, 4, 8)):
    out = {}
    for s in steps:
        other = 1.0 + (0.01 * s if drift_from is not None and s >= drift_from else 0.0)
        out[s] = {"0": _fp(1.0), "1": _fp(other)}
    return out


def test_steps_on_local_gradients_and_drifted_replicas_fire():
    f = assert_fires("TD606", _job(_unsynced(range(1, 9)), _fps(drift_from=2)))
    assert f.severity is Severity.ERROR and f.step == 1
    assert f.where.source == SRC and f.evidence["drift_step"] == 2
    assert f.evidence["ranks"] == [0, 1] and f.evidence["unsynced_steps"] == {"0": 8, "1": 8}


def test_replicas_still_in_sync_are_averaged_some_other_way():
    # no_sync() then a hand-written all_reduce of the gradients: the replicas agree.
    assert_silent("TD606", _job(_unsynced(range(1, 9)), _fps()))


def test_drift_before_the_first_unsynced_step_is_not_its_doing():
    fps = _fps(drift_from=2)
    assert_silent("TD606", _job(_unsynced([8]), {s: v for s, v in fps.items() if s < 8}))


def test_no_sync_on_the_micro_batches_before_the_last_is_silent():
    rec = {"synced": 1, "unsynced": 1, "backwards": 2, "last": True}
    assert_silent("TD606", _job({s: {"0": rec, "1": rec} for s in range(1, 9)}, _fps()))


def test_accumulation_without_no_sync_is_info():
    rec = {"synced": 2, "unsynced": 0, "backwards": 2, "last": True}
    f = assert_fires("TD606", _job({s: {"0": rec, "1": rec} for s in range(1, 9)}, _fps()))
    assert f.severity is Severity.INFO and f.evidence["synced_backwards_per_step"] == [2]


def test_several_wrappers_or_one_backward_are_not_accumulation():
    rec = {"synced": 2, "unsynced": 0, "backwards": 2, "last": True}
    sync = {s: {"0": rec, "1": rec} for s in range(1, 9)}
    assert_silent("TD606", _job(sync, _fps(), wrappers=2))  # a GAN: D and G
    one = {"synced": 2, "unsynced": 0, "backwards": 1, "last": True}  # two forwards, one loss
    assert_silent("TD606", _job({s: {"0": one, "1": one} for s in range(1, 9)}, _fps()))


def test_a_single_process_timeline_is_silent():
    assert_silent("TD606", _job(_unsynced(range(1, 9), ranks=("0",)), {}, ranks=("0",)))

"""TD601 rank-desync on hand-built job timelines (distributed/job_timeline.py's signals); the
real 2-rank jobs (a forward bypassing the wrapper, a parameter registered after wrapping,
broadcast_buffers=False, and the healthy BatchNorm twin): tests/distributed/test_td60x_jobs.py."""

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

W = "module.fc.weight"
B = "module.fc.bias"
BN = "module.bn.running_mean"


def _fp(**norms):
    out = {}
    for name, (l2, l1) in norms.items():
        out[f"{name}#2"], out[f"{name}#1"] = l2, l1
    return out


def _job(params, buffers=None, ddp=None, bypass=None, ranks=("0", "1")):
    steps = {0: {"job.ranks": {r: {"last_step": 16, "ended": True} for r in ranks}}}
    ddp = ddp or {
        r: {"<model>": {"broadcast_buffers": True, "unsynced": [], "ignored": []}} for r in ranks
    }
    steps[0]["job.ddp"] = ddp
    for step, by_rank in params.items():
        steps.setdefault(step, {})["job.param_fp"] = by_rank
    for step, by_rank in (buffers or {}).items():
        steps.setdefault(step, {})["job.buffer_fp"] = by_rank
    for step, by_rank in (bypass or {}).items():
        steps.setdefault(step, {})["job.bypass"] = by_rank
    return make_timeline(params=[W, B], steps=steps, last_step=16)


def _same(step_values):
    return {s: {"0": v, "1": dict(v)} for s, v in step_values.items()}


def test_identical_replicas_are_silent():
    fps = {s: _fp(**{W: (1.0 + s, 2.0 + s), B: (0.5, 0.5)}) for s in (1, 2, 3, 4, 8, 16)}
    assert_silent("TD601", _job(_same(fps)))


def test_params_that_drift_apart_fire_with_the_bypass_line():
    params = _same({s: _fp(**{W: (1.0, 2.0), B: (0.5, 0.5)}) for s in (1, 2, 3)})
    for s in (4, 8, 16):
        params[s] = {
            "0": _fp(**{W: (1.0 + s, 2.0), B: (0.5, 0.5)}),
            "1": _fp(**{W: (1.1 + s, 2.0), B: (0.5, 0.5)}),
        }
    bypass = {
        3: {"0": {"count": 1, "source": "train.py:45"}, "1": {"count": 1, "source": "train.py:45"}}
    }
    f = assert_fires("TD601", _job(params, bypass=bypass))
    assert f.severity is Severity.ERROR
    assert f.step == 4 and f.evidence["last_in_sync_step"] == 3
    assert f.evidence["ranks"] == [0, 1] and f.evidence["differing_ranks"] == [1]
    assert f.where.source == "train.py:45" and f.where.params == (W,)
    assert "not through DDP" in f.cause


def test_a_late_parameter_is_named_as_unsynchronized():
    late = "module.late_bias"
    ddp = {r: {"<model>": {"broadcast_buffers": True, "unsynced": [late]}} for r in "01"}
    params = _same({1: _fp(**{W: (1.0, 2.0), late: (0.0, 0.0)})})
    for s in (2, 3, 4):
        params[s] = {
            "0": _fp(**{W: (1.0, 2.0), late: (0.1, 0.2)}),
            "1": _fp(**{W: (1.0, 2.0), late: (0.3, 0.5)}),
        }
    f = assert_fires("TD601", _job(params, ddp=ddp))
    assert f.where.params == (late,) and "registered after" in f.cause


def test_one_differing_step_is_not_enough():
    params = _same({s: _fp(**{W: (1.0, 2.0)}) for s in (1, 2, 3)})
    params[4] = {"0": _fp(**{W: (1.0, 2.0)}), "1": _fp(**{W: (1.5, 2.0)})}
    assert_silent("TD601", _job(params))


def test_differences_within_float_reduction_order_are_silent():
    # 1e-7 relative: a float32 norm summed in another order, not a desync.
    params = {
        s: {"0": _fp(**{W: (100.0, 900.0)}), "1": _fp(**{W: (100.00001, 900.0)})}
        for s in (1, 2, 4, 8)
    }
    assert_silent("TD601", _job(params))


def test_batchnorm_buffers_differ_legitimately_with_broadcast_buffers():
    params = _same({s: _fp(**{W: (1.0, 2.0)}) for s in (1, 2, 4, 8)})
    buffers = {
        s: {"0": _fp(**{BN: (0.1 * s, 0.2)}), "1": _fp(**{BN: (0.12 * s, 0.2)})} for s in (2, 4, 8)
    }
    assert_silent("TD601", _job(params, buffers=buffers))


def test_buffers_drift_with_broadcast_buffers_off_is_a_warning():
    ddp = {r: {"<model>": {"broadcast_buffers": False, "unsynced": []}} for r in "01"}
    params = _same({s: _fp(**{W: (1.0, 2.0)}) for s in (1, 2, 4, 8)})
    buffers = {
        s: {"0": _fp(**{BN: (0.1 * s, 0.2)}), "1": _fp(**{BN: (0.12 * s, 0.2)})} for s in (2, 4, 8)
    }
    f = assert_fires("TD601", _job(params, buffers=buffers, ddp=ddp))
    assert f.severity is Severity.WARNING and f.evidence["kind"] == "buffers"
    assert "broadcast_buffers=False" in f.cause


def test_ignored_params_are_not_compared():
    ddp = {
        r: {"<model>": {"broadcast_buffers": True, "unsynced": [], "ignored": [B]}} for r in "01"
    }
    params = {
        s: {"0": _fp(**{W: (1.0, 2.0), B: (0.1, 0.1)}), "1": _fp(**{W: (1.0, 2.0), B: (0.9, 0.9)})}
        for s in (1, 2, 4)
    }
    assert_silent("TD601", _job(params, ddp=ddp))


def test_a_single_rank_timeline_has_nothing_to_compare():
    assert_silent("TD601", make_timeline(params=[W], steps={1: {"grads.norm": {W: 1.0}}}))

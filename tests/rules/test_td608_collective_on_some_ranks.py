"""TD608 collective-on-some-ranks on hand-built job timelines; the real 2-rank jobs (an
all_reduce under `if rank == 0:` after training, and every rank joining it):
tests/distributed/test_td60x_jobs.py."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline

SRC = "train.py:42"
HUNG = {"ended": "exception", "exception": "RuntimeError: Connection closed", "source": SRC}


def _job(calls, outcomes, last=(8, 8)):
    ranks = {
        str(r): {"last_step": last[r], "ended": True, "outcome": o} for r, o in enumerate(outcomes)
    }
    steps = {0: {"job.ranks": ranks}}
    for s, by_rank in calls.items():
        steps[s] = {"job.collectives": by_rank}
    return make_timeline(params=["module.w"], steps=steps, last_step=max(last))


def _per_step(n=1, steps=range(1, 9)):
    return {s: {"0": _c(n), "1": _c(n)} for s in steps}


def _c(n, src="train.py:30", op="all_reduce"):
    return {"n": n, "calls": [[op, src]] * n}


def test_a_collective_on_rank0_only_after_training_fires():
    calls = _per_step()
    calls[9] = {"0": _c(1, SRC)}
    f = assert_fires("TD608", _job(calls, [HUNG, {"ended": "normal"}]))
    assert f.evidence["called_by"] == [0] and f.evidence["not_called_by"] == [1]
    assert f.where.source == SRC and f.step == 8 and "all_reduce" in f.title


def test_same_collectives_everywhere_is_silent():
    assert_silent("TD608", _job(_per_step(), [HUNG, {"ended": "normal"}]))


def test_a_clean_job_is_not_judged():
    calls = _per_step()
    calls[9] = {"0": _c(1, SRC)}
    assert_silent("TD608", _job(calls, [{"ended": "normal"}, {"ended": "normal"}]))


def test_a_rank_that_crashed_elsewhere_is_not_compared_past_its_last_step():
    # rank 1 raised at its own line in step 5 (after closing step 4): rank 0's all_reduce of
    # step 5, which rank 1 never reached, is not a divergence.
    calls = _per_step(steps=range(1, 5))
    calls[5] = {"0": _c(1)}
    crashed = {"ended": "exception", "exception": "ValueError: bad", "source": "train.py:77"}
    assert_silent("TD608", _job(calls, [{"ended": "killed"}, crashed], last=(5, 4)))


def test_subgroup_calls_are_not_recorded_so_a_single_process_is_silent():
    assert_silent("TD608", make_timeline(params=["w"], steps={0: {"job.ranks": {"0": {}}}}))


def test_ranks_all_stopped_inside_a_step_have_partial_counts():
    # Ctrl-C on a healthy job: rank 0 was in the step's second all_reduce, rank 1 in its first.
    calls = _per_step(n=2)
    calls[9] = {"0": _c(2), "1": _c(1)}
    stopped = {"ended": "interrupted", "signal": "SIGINT"}
    assert_silent("TD608", _job(calls, [stopped, stopped]))

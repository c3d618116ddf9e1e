"""TD602 nonfinite-on-one-rank on hand-built job timelines; the real 2-rank job (a NaN record
in rank 1's shard) and its healthy twin: tests/distributed/test_td60x_jobs.py."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline

NAN = float("nan")


def _job(losses, nonfinite=None, data_fp=None, samples=None):
    steps = {0: {"job.ranks": {"0": {"last_step": 12}, "1": {"last_step": 12}}}}
    for step, by_rank in losses.items():
        steps.setdefault(step, {})["job.loss"] = by_rank
    for step, by_rank in (nonfinite or {}).items():
        steps.setdefault(step, {})["job.nonfinite"] = by_rank
    for step, by_rank in (data_fp or {}).items():
        steps.setdefault(step, {})["job.data_fp"] = by_rank
    for step, by_rank in (samples or {}).items():
        steps.setdefault(step, {})["job.data_samples"] = by_rank
    return make_timeline(params=["module.w"], steps=steps, last_step=12)


def _losses(bad_from):
    """step -> {rank: [loss]}; rank r non-finite from bad_from[r] on."""
    return {
        s: {r: [NAN if s >= bad_from.get(r, 99) else 1.0 / s] for r in ("0", "1")}
        for s in range(1, 13)
    }


def test_a_nan_on_rank_1_spread_to_rank_0_names_rank_step_and_batch():
    fp = {10: {"1": {"in0.sum": NAN, "in0.min": NAN, "in1.sum": 3.0}, "0": {"in0.sum": 1.0}}}
    samples = {10: {"1": [0.5, NAN, 0.2], "0": [0.1, 0.2, 0.3]}}
    nonfinite = {10: {"1": ["loss", "grads"], "0": ["grads"]}}
    f = assert_fires("TD602", _job(_losses({"1": 10, "0": 11}), nonfinite, fp, samples))
    assert f.step == 10 and f.evidence["origin_ranks"] == [1]
    assert f.evidence["ranks"] == [0, 1]
    assert f.evidence["batch"]["nonfinite_inputs"] == ["in0"]
    assert f.evidence["batch"]["nonfinite_samples"] == [1]
    assert "rank 1" in f.title and "step 10" in f.title


def test_every_rank_at_once_is_not_one_rank_first():
    assert_silent("TD602", _job(_losses({"0": 7, "1": 7})))


def test_a_nan_that_did_not_spread_is_left_to_td201():
    assert_silent("TD602", _job(_losses({"1": 9})))


def test_finite_everywhere_is_silent():
    assert_silent("TD602", _job(_losses({})))


def test_a_batch_not_fingerprinted_is_not_called_finite():
    nonfinite = {20: {"1": ["loss", "grads"], "0": ["grads"]}}
    losses = {
        s: {r: [NAN if s >= {"1": 20, "0": 21}[r] else 1.0] for r in "01"} for s in (19, 20, 21)
    }
    f = assert_fires("TD602", _job(losses, nonfinite))
    assert "not fingerprinted" in f.title and f.step == 20

"""TD609 validation-metric-not-synced on hand-built job timelines; the real 2-rank jobs (a
validation loss averaged on each rank's shard, and the all-reduced twin):
tests/distributed/test_td60x_jobs.py."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _job(per_rank, steps=(4, 8, 12)):
    """per_rank: {rank: lambda step -> {name: value}} at each validation step."""
    ranks = sorted(per_rank)
    data = {0: {"job.ranks": {r: {"last_step": 12} for r in ranks}}}
    for s in steps:
        data[s] = {"job.val": {r: per_rank[r](s) for r in ranks if per_rank[r](s) is not None}}
    return make_timeline(params=["module.w"], steps=data, last_step=12)


def test_per_shard_validation_loss_fires_with_the_ranks_values():
    f = assert_fires(
        "TD609", _job({"0": lambda s: {"loss": 1.0 / s}, "1": lambda s: {"loss": 1.3 / s}})
    )
    assert f.evidence["metric"] == "loss" and f.evidence["ranks"] == [0, 1]
    assert f.evidence["first_step"] == 4 and f.evidence["validations"] == 3
    assert f.evidence["values"] == {"0": 0.25, "1": 0.325}
    assert f.severity.value == "warning"


def test_all_reduced_value_is_silent():
    assert_silent(
        "TD609", _job({"0": lambda s: {"loss": 1.0 / s}, "1": lambda s: {"loss": 1.0 / s}})
    )


def test_float_rounding_apart_is_silent():
    # The same mean reduced in another order: a few ulps of float32 apart.
    assert_silent(
        "TD609",
        _job({"0": lambda s: {"acc": 0.8125}, "1": lambda s: {"acc": 0.8125 * (1 + 3e-7)}}),
    )


def test_logged_on_rank0_only_cannot_tell():
    assert_silent("TD609", _job({"0": lambda s: {"loss": 1.0 / s}, "1": lambda s: None}))
    assert_silent("TD609", _job({"0": lambda s: {"loss": 1.0 / s}}))


def test_equal_at_one_validation_is_not_judged_unsynced():
    # Equal at step 8: the value may be synced and the other steps' differences something else.
    assert_silent(
        "TD609",
        _job({"0": lambda s: {"loss": 1.0}, "1": lambda s: {"loss": 1.0 if s == 8 else 2.0}}),
    )


def test_a_metric_is_named_when_the_loss_is_synced():
    f = assert_fires(
        "TD609",
        _job(
            {
                "0": lambda s: {"loss": 0.5, "val_acc": 0.75},
                "1": lambda s: {"loss": 0.5, "val_acc": 0.8125},
            }
        ),
    )
    assert f.evidence["metric"] == "val_acc" and f.evidence["metrics"] == ["val_acc"]


def test_non_finite_values_are_not_compared():
    nan = float("nan")
    assert_silent("TD609", _job({"0": lambda s: {"loss": nan}, "1": lambda s: {"loss": 1.0}}))


def test_without_validations_silent():
    tl = make_timeline(
        params=["module.w"], steps={0: {"job.ranks": {"0": {}, "1": {}}}}, last_step=4
    )
    assert_silent("TD609", tl)


def test_a_ranks_own_timing_or_memory_is_not_judged():
    per_rank = {
        "0": lambda s: {"loss": 0.5, "val_time": 1.25, "samples_per_second": 800.0},
        "1": lambda s: {"loss": 0.5, "val_time": 1.5, "samples_per_second": 700.0},
    }
    assert_silent("TD609", _job(per_rank))

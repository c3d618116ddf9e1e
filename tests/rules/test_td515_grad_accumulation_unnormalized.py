"""TD515 grad-accumulation-unnormalized on hand-built timelines (and how it differs from TD109)."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts


def _tl(factors, cls="SGD", clip=None, divided=False, n_steps=10):
    steps = {}
    for s in range(1, n_steps + 1):
        steps[s] = {
            "loss.factor": list(factors),
            "loss.site": [0] * len(factors),
            "backward.count": len(factors),
        }
        if clip is not None:
            steps[s]["schedule.clip_norm"] = [clip[0]]
            steps[s]["schedule.clip_max"] = [clip[1]]
        if divided:
            steps[s]["schedule.tensor_divided"] = len(factors)
    return make_timeline(
        params=["w"],
        optimizers=[optimizer_facts(["w"], cls=cls)],
        steps=steps,
        events=[{"kind": "backward_site", "step": 1, "site": 0, "source": "train.py:42"}],
        ended=True,
    )


def test_unnormalized_sgd_accumulation_fires():
    f = assert_fires("TD515", _tl([1.0] * 4))
    assert f.evidence["micro_batches"] == 4
    assert f.where.source == "train.py:42"
    assert "loss / 4" in f.fix


def test_adam_fires_only_with_active_clipping():
    assert_silent("TD515", _tl([1.0] * 4, cls="AdamW"))
    assert_silent("TD515", _tl([1.0] * 4, cls="AdamW", clip=(0.5, 1.0)))
    f = assert_fires("TD515", _tl([1.0] * 4, cls="AdamW", clip=(3.2, 1.0)))
    assert f.evidence["clip"]["active_share"] == 1.0
    assert f.evidence["clip"]["median_norm_if_normalized"] == 0.8


def test_normalized_accumulation_is_silent():
    assert_silent("TD515", _tl([0.25] * 4))  # loss / accum
    assert_silent("TD515", _tl([1.0] * 4, divided=True))  # loss_sum / n_tokens (a tensor)
    assert_silent("TD515", _tl([1.0]))  # no accumulation


def test_inconsistent_factors_are_td109s():
    assert_silent("TD515", _tl([0.25, 1.0, 1.0, 1.0]))
    assert_fires("TD109", _tl([0.25, 1.0, 1.0, 1.0]))


def _counted(per_pass, divisor_of, divided, n_steps=10, passes=3, measured=(1, 2, 3, 8)):
    """Sum-reduced token losses over `passes` micro-batches of `per_pass` targets each,
    divided by `divisor_of(per_pass, passes)`: a device tensor (`divided`: the backward value
    is the quotient) or a 0-d CPU count (a constant factor: the value is the sum)."""
    tl_steps = {}
    total = 2.0 * per_pass  # the call's sum: 2.0 per target
    d = divisor_of(per_pass, passes)
    for s in range(1, n_steps + 1):
        tl_steps[s] = {
            "loss.factor": [1.0] * passes if divided else [1.0 / d] * passes,
            "loss.site": [0] * passes,
            "backward.count": passes,
            "loss.backward": [total / d if divided else total] * passes,
        }
        if divided:
            tl_steps[s]["schedule.tensor_divided"] = passes
        if s in measured:
            tl_steps[s]["loss_inputs.stats"] = {"0.loss": total, "0.n_valid": float(per_pass)}
    return make_timeline(
        params=["w"],
        optimizers=[optimizer_facts(["w"], cls="SGD")],
        steps=tl_steps,
        events=[{"kind": "backward_site", "step": 1, "site": 0, "source": "train.py:42"}],
        ended=True,
    )


def test_each_micro_batch_divided_by_its_own_target_count_fires():
    own = lambda n, passes: n  # noqa: E731
    for divided in (True, False):
        f = assert_fires("TD515", _counted(55, own, divided))
        assert f.evidence["micro_batches"] == 3
        assert f.evidence["divided_by_own_count_steps"] == 4
        assert "own micro-batch" in f.cause and "whole accumulation window" in f.fix


def test_divided_by_the_windows_target_count_is_silent():
    window = lambda n, passes: n * passes  # noqa: E731
    for divided in (True, False):
        assert_silent("TD515", _counted(55, window, divided))
    # a constant normalizer on a summed loss (/ accum) is silent too
    assert_silent("TD515", _counted(55, lambda n, passes: passes, False))


def test_silent_when_no_optimizer_ever_stepped_after_two_passes():
    # A model and optimizer built per task (Reptile's inner loop): the step clock merges their
    # steps (3 passes in one step) but each optimizer had one fresh pass per step.
    tl = _tl([1.0] * 3)
    one_each = {"steps": 5, "pending": 0, "max_pending": 1, "fresh": 5, "since": 0}
    tl.facts["optimizer_activity"] = [dict(one_each) for _ in range(4)]
    assert_silent("TD515", tl)
    # One of them stepped after three passes: accumulation.
    tl.facts["optimizer_activity"][2]["max_pending"] = 3
    assert_fires("TD515", tl)

"""TD504 data-not-changing on hand-built timelines."""

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _fp(v: float) -> dict:
    return {"in0.sum": v, "in0.sumsq": v * v, "in0.wsum": v / 2, "in0.min": -1.0, "in0.max": 1.0}


def _tl(values, stepped=True, updates=None):
    steps = {}
    for s, v in enumerate(values, 1):
        steps[s] = {"data.fp": _fp(v), "optim.step": 1 if stepped else 0}
        if updates is not None:
            steps[s]["params.update"] = {"w": updates}
    steps[1]["data.inputs"] = {"in0": {"dtype": "float32", "shape": [32, 16], "float": True}}
    return make_timeline(params=["w"], steps=steps)


def test_fires_on_the_same_batch_every_step():
    f = assert_fires("TD504", _tl([3.0] * 30, updates=0.01))
    assert f.step == 1
    assert f.evidence["identical_steps"] == 30
    assert "30 consecutive steps" in f.title
    assert f.severity is Severity.INFO  # one batch for the whole run: maybe full-batch on purpose
    # ... and its words say so, not that the loop is wrong (L-BFGS, a SIREN on a pixel grid).
    assert "full-batch training if meant" in f.cause
    assert f.fix.startswith("nothing to fix for deliberate full-batch training")


def test_fires_on_a_long_identical_run_inside_the_run():
    f = assert_fires("TD504", _tl([float(i) for i in range(5)] + [9.0] * 12 + [1.5, 2.5]))
    assert (f.evidence["first_step"], f.evidence["last_step"]) == (6, 17)
    assert f.severity is Severity.WARNING  # fresh batches, then frozen: not full-batch training


def test_silent_on_fresh_batches_and_on_a_short_repeat():
    assert_silent("TD504", _tl([float(i) for i in range(30)]))
    assert_silent("TD504", _tl([1.0, 2.0] + [7.0] * 5 + [3.0, 4.0]))
    # A cycle of a few batches repeats, but never two steps in a row.
    assert_silent("TD504", _tl([float(i % 4) for i in range(40)]))


def test_silent_without_optimizer_steps_or_when_params_do_not_move():
    assert_silent("TD504", _tl([3.0] * 30, stepped=False))
    assert_silent("TD504", _tl([3.0] * 30, updates=0.0))  # TD104's finding, not a data one


def test_sampled_pairs_count_and_a_loader_cycling_with_the_interval_does_not():
    # After the first steps, fingerprints come in pairs: a sampled step and the next.
    pairs = [s for k in (10, 20, 30, 40) for s in (k, k + 1)]

    def steps(fp):
        out = {s: {"optim.step": 1} for s in range(1, 42)}  # the optimizer steps every step
        for s in pairs:
            out[s]["data.fp"] = fp(s)
        return out

    same = make_timeline(params=["w"], steps=steps(lambda s: _fp(1.0)))
    f = assert_fires("TD504", same)
    assert f.evidence["identical_steps"] == 32 and f.evidence["fingerprinted_steps"] == 8
    # An unshuffled loader of 10 batches: batch 0 at every sampled step, batch 1 after it.
    cycling = make_timeline(params=["w"], steps=steps(lambda s: _fp(1.0 if s % 10 == 0 else 2.0)))
    assert_silent("TD504", cycling)


def test_a_different_batch_in_between_breaks_the_run():
    tl = make_timeline(
        params=["w"],
        steps={
            **{s: {"data.fp": _fp(1.0), "optim.step": 1} for s in range(1, 7)},
            7: {"data.fp": _fp(2.0), "optim.step": 1},
            **{s: {"data.fp": _fp(1.0), "optim.step": 1} for s in range(8, 14)},
        },
    )
    assert_silent("TD504", tl)


def _with_source(tl_steps_extra=None, events=()):
    steps = {}
    for s in range(1, 31):
        steps[s] = {"data.fp": _fp(3.0), "optim.step": 1, "params.update": {"w": 0.01}}
    steps[1]["data.inputs"] = {"in0": {"dtype": "float32", "shape": [64, 16], "float": True}}
    steps[1]["data.inputs"]["in0"].update(tl_steps_extra or {})
    return make_timeline(params=["w"], steps=steps, events=list(events))


def test_one_batch_of_a_larger_loader_is_a_warning():
    loader = {"kind": "data_loader", "step": 1, "name": "loader", "dataset_len": 5000}
    f = assert_fires("TD504", _with_source(events=[{**loader, "batch_size": 64}]))
    assert f.severity is Severity.WARNING
    assert f.evidence["larger_source"]["dataset_len"] == 5000
    # A loader of another batch size (a validation loader) says nothing about this batch.
    f = assert_fires("TD504", _with_source(events=[{**loader, "batch_size": 256}]))
    assert f.severity is Severity.INFO
    # A loader whose one batch is the whole data set: full-batch training.
    full = {**loader, "batch_size": 64, "dataset_len": 64}
    assert assert_fires("TD504", _with_source(events=[full])).severity is Severity.INFO


def test_a_constant_slice_of_a_larger_tensor_is_a_warning_unless_its_rest_is_validated():
    f = assert_fires("TD504", _with_source({"slice_of_rows": 10000}))
    assert f.severity is Severity.WARNING
    assert f.evidence["larger_source"] == {"kind": "slice", "rows": 10000, "batch_rows": 64}
    evald = [{"kind": "data_base_in_eval", "step": 5, "rows": 9936}]
    f = assert_fires("TD504", _with_source({"slice_of_rows": 10000}, events=evald))
    assert f.severity is Severity.INFO
    # A training split of 80% sliced off: not a larger source.
    assert assert_fires("TD504", _with_source({"slice_of_rows": 80})).severity is Severity.INFO


def test_span_says_where_the_fingerprints_stop():
    """A 100-step run fingerprinted at every step to 64, then at sampled steps and the step
    after (70, 71, 80, 81): the streak ends at the last fingerprint, step 81, not at the end of
    the run (session 31's review: it said "to the end of the run")."""
    steps = {}
    for s in range(1, 101):
        steps[s] = {"optim.step": 1}
        if s <= 64 or s in (70, 71, 80, 81):
            steps[s]["data.fp"] = _fp(3.0 if s >= 2 else 1.0)
    steps[1]["data.inputs"] = {"in0": {"dtype": "float32", "shape": [32, 16], "float": True}}
    f = assert_fires("TD504", make_timeline(params=["w"], steps=steps))
    assert "(steps 2–81; steps 82–100 were not fingerprinted)" in f.title, f.title
    assert "end of the run" not in f.title
    assert (f.evidence["last_fingerprinted_step"], f.evidence["run_last_step"]) == (81, 100)
    # Fingerprinted to the run's last step: "to the end of the run".
    f = assert_fires("TD504", _tl([3.0] * 30))
    assert "(to the end of the run)" in f.title

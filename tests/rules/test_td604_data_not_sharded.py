"""TD604 data-not-sharded on hand-built job timelines; the real 2-rank jobs (a DataLoader without
DistributedSampler on every rank, and the sharded twin): tests/distributed/test_td60x_jobs.py."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _fp(v):
    return {"in0.sum": v, "in0.sumsq": v * v, "in0.wsum": v / 3, "in0.min": -v, "in0.max": v}


def _job(per_rank, wrapper="ddp"):
    ranks = sorted(per_rank)
    steps = {0: {"job.ranks": {r: {"last_step": 8} for r in ranks}}}
    if wrapper:
        steps[0]["job.ddp"] = {r: {"<model>": {"kind": wrapper}} for r in ranks}
    for s in range(1, 9):
        steps[s] = {"job.data_fp": {r: _fp(per_rank[r](s)) for r in ranks}}
    return make_timeline(params=["module.w"], steps=steps, last_step=8)


def test_identical_batches_on_both_ranks_fire():
    f = assert_fires("TD604", _job({"0": lambda s: float(s), "1": lambda s: float(s)}))
    assert f.evidence["groups"] == [[0, 1]] and f.evidence["ranks"] == [0, 1]


def test_three_ranks_two_identical():
    f = assert_fires(
        "TD604",
        _job({"0": lambda s: float(s), "1": lambda s: s + 0.5, "2": lambda s: float(s)}),
    )
    assert f.evidence["groups"] == [[0, 2]]


def test_sharded_data_is_silent():
    assert_silent("TD604", _job({"0": lambda s: float(s), "1": lambda s: s + 100.0}))


def test_one_constant_batch_everywhere_is_td504s_case():
    assert_silent("TD604", _job({"0": lambda s: 1.0, "1": lambda s: 1.0}))


def test_fsdp_is_data_parallel_too():
    assert_fires("TD604", _job({"0": lambda s: float(s), "1": lambda s: float(s)}, "fsdp"))


def test_without_a_data_parallel_wrapper_ranks_may_share_inputs():
    # A tensor- or pipeline-parallel group feeds every rank the same batch by design.
    assert_silent("TD604", _job({"0": lambda s: float(s), "1": lambda s: float(s)}, None))


def test_names_the_line_that_built_the_loader():
    tl = _job({"0": lambda s: float(s), "1": lambda s: float(s)})
    tl.record(2, "job.loader", {"0": {"built": "train.py:24", "iterated": "train.py:31"}})
    f = assert_fires("TD604", tl)
    assert f.where.source == "train.py:24" and f.evidence["loader_iterated_at"] == "train.py:31"

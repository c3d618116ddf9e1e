"""TD603 unused-params-ddp on hand-built job timelines; the real 2-rank jobs (an auxiliary head
never called under find_unused_parameters=True, and the twin that uses it):
tests/distributed/test_td60x_jobs.py."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["module.body.weight", "module.head.weight", "module.aux.weight", "module.aux.bias"]


def _job(none_by_step, flag=True, ranks=("0", "1")):
    ddp = {
        r: {"<model>": {"find_unused_parameters": flag, "broadcast_buffers": True}} for r in ranks
    }
    steps = {0: {"job.ranks": {r: {"last_step": 8} for r in ranks}, "job.ddp": ddp}}
    for s, by_rank in none_by_step.items():
        steps[s] = {"job.grads_none": by_rank}
    return make_timeline(params=PARAMS, steps=steps, last_step=8)


def _every(names, steps=(1, 2, 3, 4), ranks=("0", "1")):
    return {s: {r: list(names) for r in ranks} for s in steps}


def test_a_module_unused_on_every_rank_is_named():
    f = assert_fires("TD603", _job(_every(["module.aux.bias", "module.aux.weight"])))
    assert f.where.module == "module.aux" and f.evidence["ranks"] == [0, 1]


def test_without_find_unused_parameters_it_is_td102s_case():
    assert_silent("TD603", _job(_every(["module.aux.weight"]), flag=False))


def test_used_on_some_steps_is_what_the_flag_is_for():
    none = _every(["module.aux.weight"])
    none[3] = {"0": [], "1": ["module.aux.weight"]}
    assert_silent("TD603", _job(none))


def test_used_on_one_rank_only_is_not_never():
    none = {s: {"0": ["module.aux.weight"], "1": []} for s in (1, 2, 3, 4)}
    assert_silent("TD603", _job(none))


def test_too_few_observed_steps():
    assert_silent("TD603", _job(_every(["module.aux.weight"], steps=(1, 2))))

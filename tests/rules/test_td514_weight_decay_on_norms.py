"""TD514 weight-decay-on-norms on hand-built timelines."""

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts

PARAMS = ["fc.weight", "fc.bias", "ln.weight", "ln.bias"]
TYPES = {"<model>": "Net", "fc": "Linear", "ln": "LayerNorm"}


def _tl(wd_groups, gain_norms, lr=0.1, momentum=0.9):
    opt = optimizer_facts(*[g for g, _ in wd_groups], lr=lr)
    for group, (_, wd) in zip(opt["groups"], wd_groups):
        group["weight_decay"] = wd
    steps = {}
    for i, g in enumerate(gain_norms, start=1):
        steps[i] = {
            "params.norm": {"fc.weight": 4.0, "ln.weight": g},
            "optim.lr": {grp["id"]: lr for grp in opt["groups"]},
        }
    hp = {
        grp["id"]: {"momentum": momentum, "dampening": 0.0, "decoupled": False}
        for grp in opt["groups"]
    }
    return make_timeline(
        params=PARAMS,
        optimizers=[opt],
        steps=steps,
        facts={"module_types": TYPES},
        events=[{"kind": "optimizer_hparams", "step": 1, "groups": hp}],
        ended=True,
    )


def test_decayed_gains_that_shrink_are_reported():
    shrinking = [2.0 * 0.99**i for i in range(60)]
    f = assert_fires("TD514", _tl([(PARAMS, 1e-2)], shrinking))
    assert f.where.params == ("ln.weight",)
    gain = f.evidence["gains"]["ln.weight"]
    assert 0.4 < gain["shrink"] < 0.5
    assert abs(gain["decay_pull"] - 0.59) < 1e-6  # 59 steps x 0.1 x 1e-2 / (1 - 0.9)
    assert f.evidence["decayed_biases"] == 2


def test_split_groups_are_silent():
    shrinking = [2.0 * 0.99**i for i in range(60)]
    groups = [(["fc.weight"], 5e-3), (["fc.bias", "ln.weight", "ln.bias"], 0.0)]
    assert_silent("TD514", _tl(groups, shrinking))


def test_weak_decay_is_only_the_configuration_even_if_gains_shrink():
    # AdamW's default 0.01 at lr 1e-3: the decay cannot explain a 45% shrink.
    shrinking = [2.0 * 0.99**i for i in range(60)]
    f = assert_fires("TD514", _tl([(PARAMS, 0.01)], shrinking, lr=1e-3, momentum=0.0))
    assert f.severity == Severity.INFO and "gains" not in f.evidence


def test_decayed_gains_that_hold_are_info_from_the_configuration():
    f = assert_fires("TD514", _tl([(PARAMS, 5e-3)], [2.0] * 60))
    assert f.severity == Severity.INFO
    group = f.evidence["groups"]["opt0/group0"]
    assert group["norm_gains"] == 1 and group["norm_biases"] == 1 and group["other_biases"] == 1
    assert abs(group["decay_per_step"] - 0.1 * 5e-3) < 1e-12
    assert f.where.params == ("ln.bias", "ln.weight")


def test_configuration_alone_before_any_norm_is_read():
    tl = _tl([(PARAMS, 5e-4)], [2.0])
    assert assert_fires("TD514", tl).severity == Severity.INFO

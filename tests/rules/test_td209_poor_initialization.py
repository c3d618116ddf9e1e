"""TD209 poor-initialization on hand-built timelines."""

from __future__ import annotations

import math

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["body.weight", "head.weight", "head.bias"]


def _tl(ce=None, classes=10, head=(0.2, 0.15), body=(1.0, 0.6), uniform=None):
    steps = {1: {"optim.lr": {"opt0/group0": 0.1}}}
    if ce is not None:
        steps[1]["init.ce_loss"] = {"0": ce}
        steps[1]["init.ce_classes"] = {"0": classes}
    if uniform is not None:
        steps[1]["init.ce_uniform"] = {"0": uniform}
    steps[1]["init.in_std"] = {"body": body[0], "head": head[0]}
    steps[1]["init.out_std"] = {"body": body[1], "head": head[1]}
    events = [
        {"kind": "final_layers", "step": 1, "modules": ["head"], "params": PARAMS[1:]},
        {"kind": "cross_entropy_call", "step": 1, "classes": classes, "source": "train.py:30"},
    ]
    return make_timeline(params=PARAMS, steps=steps, events=events)


def test_cross_entropy_far_above_ln_c():
    f = assert_fires("TD209", _tl(ce=9.0))
    assert f.evidence["ln_classes"] == math.log(10)
    assert f.where.source == "train.py:30"
    assert f.where.module is None
    assert "inputs that are not normalized" in f.cause


def test_a_margin_on_the_target_logit_is_not_an_init():
    """ArcFace/CosFace: the logits are small (against a random target the loss is near ln C)
    and the loss is high because the margin lowers the target logit, by design."""
    assert_silent("TD209", _tl(ce=9.0, classes=20, uniform=3.4))
    # The logits themselves are large: against any target the loss is high.
    assert_fires("TD209", _tl(ce=9.0, classes=20, uniform=8.7))


def test_final_layer_with_a_large_gain_is_named():
    f = assert_fires("TD209", _tl(ce=2.4, head=(0.2, 2.0)))
    assert f.where.module == "head"
    assert f.where.params == ("head.weight", "head.bias")
    assert f.evidence["final_layers"]["head"]["gain"] == 10.0


def test_both_together_make_one_finding():
    f = assert_fires("TD209", _tl(ce=15.0, head=(0.2, 3.0)))
    assert "loss at init" in f.title and "`head`" in f.title


def test_healthy_init_is_silent():
    assert_silent("TD209", _tl(ce=2.35))
    # a hidden layer with a large gain is not final: not judged
    assert_silent("TD209", _tl(ce=2.35, body=(0.1, 5.0)))
    # a large gain on a tiny input (small output) is not judged either
    assert_silent("TD209", _tl(ce=2.35, head=(0.01, 0.2)))


def _clip_tl(ce, head_params, head=(0.125, 1.76)):
    """CLIP-like: the final ops are a learned temperature and the towers' projections."""
    params = {"tower.proj.weight": {"shape": (16, 8)}, **head_params}
    steps = {
        1: {
            "init.ce_loss": {"0": ce},
            "init.ce_classes": {"0": 32},
            "init.in_std": {"head": head[0], "tower.proj": 1.0},
            "init.out_std": {"head": head[1], "tower.proj": 0.5},
        }
    }
    finals = [*head_params, "tower.proj.weight"]
    modules = sorted({n.rsplit(".", 1)[0] for n in finals})
    events = [
        {"kind": "final_layers", "step": 1, "modules": modules, "params": finals},
        {"kind": "cross_entropy_call", "step": 1, "classes": 32, "source": "train.py:30"},
    ]
    return make_timeline(params=params, steps=steps, events=events)


def test_learned_temperature_is_not_judged():
    # CLIP's logit_scale (exp(t) = 1/0.07 at init, trained): the loss above ln C and the
    # head's 14x gain are the temperature's, by design
    assert_silent("TD209", _clip_tl(7.73, {"head.logit_scale": {"shape": ()}}))
    assert_silent("TD209", _clip_tl(7.73, {"head.logit_scale": {"shape": (1,)}}))


def test_a_one_output_bias_is_not_a_temperature():
    # a Linear(d, 1) head's bias is a one-element param too: the large CE is still judged
    tl = _clip_tl(9.0, {"head.weight": {"shape": (1, 8)}, "head.bias": {"shape": (1,)}})
    assert_fires("TD209", tl)


def test_a_frozen_scalar_is_not_a_learned_temperature():
    tl = _clip_tl(9.0, {"head.logit_scale": {"shape": (), "requires_grad": False}})
    assert_fires("TD209", tl)


def test_a_tied_output_layer_names_the_shared_weight():
    """dreamgonfly/transformer-pytorch: the output layer's weight is the target embedding's
    (N(0, 1), nn.Embedding's default); the cause is the shared weight's init, and the fix
    re-initializes it for both uses (re-initializing the output layer alone would be the
    embedding too)."""
    names = ["embed.weight", "blocks.weight"]
    steps = {
        1: {
            "init.ce_loss": {"0": 49.5},
            "init.ce_classes": {"0": 200},
            "init.in_std": {"lm_head": 1.0},
            "init.out_std": {"lm_head": 8.8},
        }
    }
    events = [
        {"kind": "final_layers", "step": 1, "modules": ["embed"], "params": ["embed.weight"]},
        {"kind": "cross_entropy_call", "step": 1, "classes": 200, "source": "lm.py:36"},
    ]
    tl = make_timeline(params=names, steps=steps, events=events)
    tl.facts["params"]["embed.weight"]["shape"] = [200, 64]
    tl.facts["tied_params"] = {"embed.weight": {"also": ["lm_head.weight"], "std": 1.0}}
    tl.facts["module_types"] = {"embed": "Embedding", "lm_head": "Linear"}
    f = assert_fires("TD209", tl)
    assert f.where.module == "lm_head"
    assert set(f.where.params) == {"embed.weight", "lm_head.weight"}
    assert "tied: `embed.weight` is also `lm_head.weight`" in f.cause
    assert "the embedding `embed`" in f.cause and "64 ** -0.5" in f.fix


def test_a_tied_output_layer_is_judged_by_its_logits_not_its_gain():
    """T5: an N(0, 1) shared embedding, the last hidden state times d ** -0.5 before the tied
    lm_head: a gain of 13 over a 0.088 input, logits of std 1.17 (below sqrt(2 x ce_margin))."""
    names = ["embed.weight", "blocks.weight"]
    steps = {1: {"init.in_std": {"lm_head": 0.0884}, "init.out_std": {"lm_head": 1.17}}}
    events = [{"kind": "final_layers", "step": 1, "modules": ["embed"], "params": ["embed.weight"]}]
    tl = make_timeline(params=names, steps=steps, events=events)
    tl.facts["params"]["embed.weight"]["shape"] = [300, 128]
    tl.facts["tied_params"] = {"embed.weight": {"also": ["lm_head.weight"], "std": 1.0}}
    tl.facts["module_types"] = {"embed": "Embedding", "lm_head": "Linear"}
    assert_silent("TD209", tl)
    final = {"kind": "final_layers", "step": 1, "modules": ["lm_head"]}
    final["params"] = ["lm_head.weight"]
    untied = make_timeline(params=["lm_head.weight"], steps=steps, events=[final])
    assert assert_fires("TD209", untied).where.module == "lm_head"  # an untied head: its init

"""TD207 vanishing-gradient on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

LAYERS = [f"layers.{i}" for i in range(6)] + ["head"]
PARAMS = [f"{layer}.weight" for layer in LAYERS]


def _tl(rel, steps=(1, 2, 3, 10), ended=False):
    data = {}
    for s in steps:
        data[s] = {
            "grads.norm": {f"{layer}.weight": r * 2.0 for layer, r in zip(LAYERS, rel)},
            "params.norm": dict.fromkeys(PARAMS, 2.0),
        }
    return make_timeline(params=PARAMS, steps=data, ended=ended)


def test_names_the_first_layers_orders_below_the_rest():
    rel = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-1]
    f = assert_fires("TD207", _tl(rel))
    assert f.where.module == "layers.0"
    assert f.where.params == ("layers.0.weight", "layers.1.weight")
    assert set(f.evidence["layers"]) == {"layers.0", "layers.1"}
    assert f.evidence["median_layer_ratio"] == 1e-5


def test_healthy_spread_is_silent():
    assert_silent("TD207", _tl([0.03, 0.04, 0.05, 0.03, 0.02, 0.02, 0.2]))


def test_waits_for_a_window():
    rel = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-1]
    assert_silent("TD207", _tl(rel, steps=(1, 2)))
    assert_fires("TD207", _tl(rel, steps=(1, 2), ended=True))


def test_exactly_zero_gradients_are_left_to_other_rules():
    assert_silent("TD207", _tl([0.0, 0.03, 0.04, 0.05, 0.03, 0.02, 0.2]))


def test_embedding_tables_are_not_judged():
    # A batch touches few rows of an embedding table: its relative gradient is small by design.
    rel = [1e-6, 1e-5, 1e-4, 0.03, 0.02, 0.02, 0.2]
    tl = _tl(rel)
    tl.facts["module_types"] = {"layers.0": "Embedding", **{m: "Linear" for m in LAYERS[1:]}}
    f = assert_fires("TD207", tl)
    assert "layers.0" not in f.evidence["all_layers"] and f.where.module == "layers.1"
    tl.facts["module_types"]["layers.0"] = "Linear"
    assert assert_fires("TD207", tl).where.module == "layers.0"


def test_one_odd_layer_without_a_depth_trend_is_not_vanishing():
    # An attention query at init or a gate: one small layer, the early half as a whole is fine.
    assert_silent("TD207", _tl([1e-6, 0.04, 0.05, 0.03, 0.02, 0.02, 0.2]))
    assert_silent("TD207", _tl([0.04, 0.05, 0.03, 1e-6, 0.02, 0.02, 0.2]))


def test_norm_gains_are_not_judged():
    # Gains start at 1 (a large ||θ||): their relative gradient is small without vanishing.
    rel = [0.03, 1e-6, 1e-6, 0.03, 0.02, 0.02, 0.2]
    tl = _tl(rel)
    tl.facts["module_types"] = {
        m: ("LayerNorm" if i in (1, 2) else "Linear") for i, m in enumerate(LAYERS)
    }
    assert_silent("TD207", tl)
    tl.facts["module_types"] = dict.fromkeys(LAYERS, "Linear")
    assert_fires("TD207", tl)


def test_lora_a_adapters_are_not_judged():
    # PEFT starts lora_B at 0: lora_A's gradient is 0, then tiny, by design.
    layers = ["q.lora_A.default", "q.lora_B.default", "k.lora_A.default", "k.lora_B.default"]
    layers += ["v.lora_B.default", "head"]
    params = [f"{layer}.weight" for layer in layers]

    def tl(names):
        rel = [1e-7, 0.03, 1e-7, 0.04, 0.05, 0.2]
        step = {
            "grads.norm": {f"{n}.weight": r * 2.0 for n, r in zip(names, rel)},
            "params.norm": {f"{n}.weight": 2.0 for n in names},
        }
        return make_timeline(
            params=[f"{n}.weight" for n in names], steps=dict.fromkeys((1, 2, 3, 10), step)
        )

    assert_silent("TD207", tl(layers))
    plain = [n.replace("lora_A", "down") for n in layers]
    assert params and assert_fires("TD207", tl(plain))


def _two_models(g_rel, d_rel):
    # A GAN: Generator and Discriminator watched together, trained by different losses.
    g = [f"Generator.l{i}" for i in range(len(g_rel))]
    d = [f"Discriminator.c{i}" for i in range(len(d_rel))]
    params = [f"{layer}.weight" for layer in g + d]
    rel = dict(zip(g + d, list(g_rel) + list(d_rel)))
    data = {
        s: {
            "grads.norm": {f"{layer}.weight": r * 2.0 for layer, r in rel.items()},
            "params.norm": dict.fromkeys(params, 2.0),
        }
        for s in (1, 2, 3, 10)
    }
    tl = make_timeline(params=params, steps=data)
    tl.facts["models"] = {"Generator": "Generator", "Discriminator": "Discriminator"}
    return tl


def test_layers_of_two_models_are_judged_within_each_model():
    # InfoGAN (PyTorch-GAN), 25 steps: the generator's first layer was 1.16e3x below the
    # median of the generator's and the discriminator's layers mixed, 19x below the
    # generator's own median: not a gradient vanishing along one chain of layers.
    assert_silent("TD207", _two_models([8.5e-7, 1.6e-5, 1.7e-5, 1.8e-4], [3e-4, 1e-3, 2e-3, 3e-3]))
    # A chain that does vanish inside one of the models is still reported.
    f = assert_fires(
        "TD207", _two_models([1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-1], [3e-4, 1e-3, 2e-3])
    )
    assert f.where.module == "Generator.l0"
    assert all(k.startswith("Generator.") for k in f.evidence["all_layers"])


def _named_tl(rel: dict[str, float], steps=(1, 2, 3, 10)):
    params = [f"{layer}.weight" if layer != "<model>" else "transitions" for layer in rel]
    data = {
        s: {
            "grads.norm": {p: r * 2.0 for p, r in zip(params, rel.values())},
            "params.norm": dict.fromkeys(params, 2.0),
        }
        for s in steps
    }
    return make_timeline(params=params, steps=data)


def test_params_held_by_a_module_with_child_layers_have_no_place_in_the_chain():
    # PyTorch's BiLSTM-CRF tutorial: `self.transitions = nn.Parameter(...)` on the model itself
    # is listed first by named_parameters although the CRF uses it last, and its START/STOP
    # entries set to -10000 (never trained) make ||θ|| huge: ||grad||/||θ|| 3.9e-05 against
    # 0.30 on its trained entries and 0.18 / 0.44 for the LSTM / the tag layer (measured).
    # It was reported as the "first layer" of a vanishing gradient.
    rel = {"<model>": 4e-5, "lstm": 0.18, "hidden2tag": 0.44}
    assert_silent("TD207", _named_tl(rel))
    # A block's own gain beside its conv: the same (the block is a container, not a layer).
    rel = {"block": 1e-7, "block.conv": 0.03, "head": 0.2}
    assert_silent("TD207", _named_tl(rel))


def test_a_vanishing_chain_beside_a_model_held_param_is_still_found():
    rel = {"<model>": 0.05, "layers.0": 1e-8, "layers.1": 1e-7, "layers.2": 1e-6}
    rel |= {"layers.3": 1e-5, "layers.4": 1e-4, "layers.5": 1e-3, "head": 1e-1}
    f = assert_fires("TD207", _named_tl(rel))
    assert f.where.module == "layers.0" and "<model>" not in f.evidence["all_layers"]


def test_ratios_that_fell_after_the_weights_grew_are_an_info_dated_from_the_fall():
    """hf-run-mlm with lr x1000 (Adam at lr=1): the ratios are even at step 1 (the initial
    weights), then the early layers' weights grow ~250x in two steps and their ||grad||/||θ||
    falls orders below the others'. What grew the weights is the cause (TD210 names it)."""
    even = [0.03, 0.04, 0.05, 0.03, 0.02, 0.02, 0.2]
    low = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-1]
    data = {
        s: {
            "grads.norm": {f"{x}.weight": r * 2.0 for x, r in zip(LAYERS, even if s == 1 else low)},
            "params.norm": dict.fromkeys(PARAMS, 2.0 if s == 1 else 500.0),
        }
        for s in (1, 2, 3, 10, 20)
    }
    f = assert_fires("TD207", make_timeline(params=PARAMS, steps=data))
    assert f.severity.value == "info" and f.step == 2, f
    assert f.evidence["weight_growth"]["layers.0"] == 250.0
    assert "after their weights grew 250x" in f.title and "not low" in f.cause
    # The same fall with the weights unchanged (a gradient that vanishes later on): a warning.
    for s in data:
        data[s]["params.norm"] = dict.fromkeys(PARAMS, 2.0)
    f = assert_fires("TD207", make_timeline(params=PARAMS, steps=data))
    assert f.severity.value == "warning"

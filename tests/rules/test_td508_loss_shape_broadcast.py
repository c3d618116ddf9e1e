from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.testing import assert_fires, assert_silent


def test_fires_on_b1_against_b():
    ev = {
        "fn": "mse_loss",
        "input_shape": [32, 1],
        "target_shape": [32],
        "broadcast_shape": [32, 32],
    }
    f = assert_fires("TD508", site_timeline(ev, {1: {}}))
    assert f.evidence["element_ratio"] == 32
    assert "train.py:12" in f.title


def test_silent_on_equal_shapes_and_on_scalar_targets():
    ev = {"fn": "mse_loss", "input_shape": [32], "target_shape": [32]}
    assert_silent("TD508", site_timeline(ev, {1: {}}))
    ev = {"fn": "l1_loss", "input_shape": [32, 4], "target_shape": [4], "broadcast_shape": [32, 4]}
    assert_silent("TD508", site_timeline(ev, {1: {}}))


# -- normalized over the wrong dim --------------------------------------------------------
def _nll(stats, **event):
    ev = {
        "fn": "nll_loss",
        "input_shape": [32, 4],
        "target_shape": [32],
        "target_float": False,
        "classes": 4,
        "class_dim": 1,
        "input_dtype": "float32",
        **event,
    }
    return site_timeline(ev, stats)


def test_log_softmax_over_the_batch_into_nll_fires_with_the_dims():
    ev = {"layout": {"head_op": "LogSoftmaxBackward0", "softmax_dim": 0, "head_dim": 0}}
    f = assert_fires("TD508", _nll({1: {"lnorm0": 2e-7, "lnorm1": 2.1}}, **ev))
    assert f.evidence["case"] == "normalized_dim"
    assert f.evidence["normalized_dim"] == 0 and f.evidence["loss_dims"] == [1]
    assert "dim 0 (size 32, the batch)" in f.title and "(32, 4)" in f.title
    assert "log_softmax over dim 0" in f.title
    assert "train.py:12" in f.title and f.where.source == "train.py:12"
    assert "dim=1" in f.fix


def test_normalized_over_the_class_dim_is_silent():
    assert_silent("TD508", _nll({1: {"lnorm0": 2.0, "lnorm1": 1e-7}}))
    # normalized along both (a Sinkhorn-style doubly normalized input): nothing to say
    assert_silent("TD508", _nll({1: {"lnorm0": 1e-7, "lnorm1": 1e-7}}))
    # normalized nowhere (raw scores into nll_loss): not this rule's business
    assert_silent("TD508", _nll({1: {"lnorm0": 3.0, "lnorm1": 2.0}}))


def test_near_uniform_steps_decide_nothing_and_a_later_step_does():
    near = {1: {"lnorm0": 1e-7, "lnorm1": 0.02}, 2: {"lnorm0": 1e-7, "lnorm1": 0.03}}
    assert_silent("TD508", _nll(near))
    f = assert_fires("TD508", _nll({**near, 4: {"lnorm0": 1e-7, "lnorm1": 0.4}}))
    assert f.step == 4 and f.evidence["steps_decided"] == [4]


def test_low_precision_inputs_get_wider_tolerances():
    stats = {1: {"lnorm0": 0.03, "lnorm1": 1.0}}
    assert_silent("TD508", _nll(stats))  # float32: 0.03 is not normalized
    f = assert_fires("TD508", _nll(stats, input_dtype="bfloat16"))
    assert f.evidence["normalized_dim"] == 0


def test_probabilities_over_the_batch_into_cross_entropy():
    f = assert_fires("TD508", _nll({1: {"pnorm0": 1e-7, "pnorm1": 7.0}}, fn="cross_entropy"))
    assert "probabilities normalized over dim 0" in f.title


def test_kl_div_judged_against_the_dim_its_target_is_normalized_along():
    ev = {"fn": "kl_div", "target_shape": [32, 4], "target_float": True, "class_dim": None}
    wrong = {1: {"lnorm0": 1e-7, "lnorm1": 1.5, "tnorm0": 5.0, "tnorm1": 1e-7}}
    f = assert_fires("TD508", _nll(wrong, **ev))
    assert f.evidence["loss_dims"] == [1] and "target normalized along dim 1" in f.title
    # a listwise loss: input and target both distributions over dim 0
    listwise = {1: {"lnorm0": 1e-7, "lnorm1": 1.5, "tnorm0": 1e-7, "tnorm1": 5.0}}
    assert_silent("TD508", _nll(listwise, **ev))
    # a target that is no distribution along any dim: nothing to compare with
    assert_silent("TD508", _nll({1: {"lnorm0": 1e-7, "lnorm1": 1.5}}, **ev))


# -- classes in the wrong dim -------------------------------------------------------------
def _ce(layout, shape=(16, 5, 5), target=(16, 5)):
    ev = {
        "fn": "cross_entropy",
        "input_shape": list(shape),
        "target_shape": list(target),
        "target_float": False,
        "classes": shape[1],
        "class_dim": 1,
        "layout": layout,
    }
    return site_timeline(ev, {1: {}})


def test_linear_features_in_the_last_dim_of_a_3d_input_fire():
    lay = {"head_op": "AddmmBackward0", "head_features": 5, "head_dim": 2, "head_module": "head"}
    f = assert_fires("TD508", _ce(lay))
    assert f.evidence["case"] == "class_dim" and f.evidence["head_dim"] == 2
    assert f.where.module == "head"
    assert "`head` (Linear) produced its 5 features along dim 2" in f.title
    assert ".transpose(1, 2)" in f.fix


def test_a_view_that_scatters_the_features_fires_and_names_the_view():
    lay = {
        "head_op": "MmBackward0",
        "head_features": 5,
        "head_dim": None,
        "view_reordered": [[16, 7, 5], [16, 5, 7]],
    }
    f = assert_fires("TD508", _ce(lay, shape=(16, 5, 7), target=(16, 7)))
    assert "turned (16, 7, 5) into (16, 5, 7)" in f.title


def test_classes_where_the_head_put_them_are_silent():
    # transposed to (B, C, T): the features are in dim 1
    lay = {"head_op": "AddmmBackward0", "head_features": 5, "head_dim": 1}
    assert_silent("TD508", _ce(lay))
    # Linear(h, C*T).view(B, C, T): the head made the whole (C, T) block, split by the view
    lay = {"head_op": "AddmmBackward0", "head_features": 35, "head_dim": None}
    assert_silent("TD508", _ce(lay, shape=(16, 5, 7), target=(16, 7)))
    # a conv's channels are dim 1 of (B, C, H, W)
    lay = {"head_op": "ConvolutionBackward0", "head_features": 3, "head_dim": 1}
    assert_silent("TD508", _ce(lay, shape=(4, 3, 8, 8), target=(4, 8, 8)))


def test_a_reshape_that_reorders_sizes_fires_on_any_loss():
    ev = {
        "fn": "mse_loss",
        "input_shape": [8, 4, 6],
        "target_shape": [8, 4, 6],
        "layout": {"view_reordered": [[8, 6, 4], [8, 4, 6]]},
    }
    f = assert_fires("TD508", site_timeline(ev, {1: {}}))
    assert f.evidence["case"] == "view_reordered"


def test_contrastive_square_matrix_with_arange_targets_is_silent():
    """CLIP's second direction written as nll_loss(log_softmax(sim, dim=0), arange(N))."""
    ev = {"input_shape": [8, 8], "target_shape": [8], "classes": 8}
    stats = {1: {"lnorm0": 1e-7, "lnorm1": 1.3}}
    assert_silent("TD508", site_timeline({**_base(), **ev}, stats, labels={1: [1] * 8}))
    # the same square input with ordinary labels (a class used twice) is the bug
    labels = {1: [2, 0, 1, 1, 1, 1, 1, 1]}
    assert_fires("TD508", site_timeline({**_base(), **ev}, stats, labels=labels))


def _base():
    return {"fn": "nll_loss", "target_float": False, "class_dim": 1, "input_dtype": "float32"}

from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.testing import assert_fires, assert_silent

CE = {"fn": "cross_entropy", "classes": 5, "input_shape": [32, 5], "target_shape": [32]}


def _hist(counts, steps=6):
    return {s: list(counts) for s in range(1, steps + 1)}


def test_one_based_labels():
    f = assert_fires("TD511", site_timeline(CE, {}, labels=_hist([0, 8, 8, 8, 8])))
    assert "1-based" in f.title


def test_class_0_as_the_ignore_index_is_padding_not_one_based_labels():
    """A language model's targets padded with id 0 and `ignore_index=0`: the probe masks the
    padding out, so class 0 never occurs among the counted labels, by design."""
    padded = {**CE, "options": {"ignore_index": 0, "reduction": 1}}
    assert_silent("TD511", site_timeline(padded, {}, labels=_hist([0, 8, 8, 8, 8])))


def test_all_labels_identical():
    assert_fires("TD511", site_timeline(CE, {}, labels=_hist([0, 0, 32, 0, 0])))


def test_out_of_range_and_float_labels():
    assert_fires("TD511", site_timeline(CE, {1: {"t_min": 0.0, "t_max": 5.0}}))
    ev = {**CE, "target_float": True, "target_dtype": "float32"}
    assert_fires("TD511", site_timeline(ev, {1: {}}))


def test_silent_on_balanced_labels_and_soft_targets():
    assert_silent(
        "TD511", site_timeline(CE, {1: {"t_min": 0.0, "t_max": 4.0}}, labels=_hist([6, 7, 6, 7, 6]))
    )
    soft = {**CE, "target_float": True, "target_shape": [32, 5]}
    assert_silent("TD511", site_timeline(soft, {1: {"t_min": 0.0, "t_max": 0.9}}))


BCE = {
    "fn": "binary_cross_entropy_with_logits",
    "classes": None,
    "input_shape": [8, 1, 16, 16],
    "target_shape": [8, 1, 16, 16],
    "target_float": True,
    "target_dtype": "float32",
}


def test_binary_targets_read_as_0_255():
    stats = {
        2: {"t_min": 0.0, "t_max": 255.0, "loss": 9.8},
        30: {"t_min": 0.0, "t_max": 255.0, "loss": -27.5},
    }
    f = assert_fires("TD511", site_timeline(BCE, stats))
    assert f.evidence["target_max"] == 255.0 and f.evidence["negative_loss_steps"] == 1
    assert "/ 255" in f.fix and "9.8 -> -27.5" in f.cause


def test_binary_targets_normalized_like_the_image():
    f = assert_fires("TD511", site_timeline(BCE, {2: {"t_min": -1.0, "t_max": 1.0}}))
    assert f.evidence["target_min"] == -1.0 and "Normalize" in f.fix


def test_silent_on_binary_targets_in_0_1():
    # 0/1 masks, soft (smoothed) targets, and a loss that is not binary cross-entropy.
    assert_silent("TD511", site_timeline(BCE, {2: {"t_min": 0.0, "t_max": 1.0}}))
    assert_silent("TD511", site_timeline(BCE, {2: {"t_min": 0.05, "t_max": 0.95}}))
    mse = {**BCE, "fn": "mse_loss"}
    assert_silent("TD511", site_timeline(mse, {2: {"t_min": -3.0, "t_max": 255.0}}))


def test_a_small_overshoot_of_resized_masks_is_a_note():
    # Bicubic resizing overshoots the 0/1 edges a little; the loss stayed positive.
    stats = {
        2: {"t_min": -0.03, "t_max": 1.04, "loss": 0.6},
        9: {"t_min": -0.03, "t_max": 1.04, "loss": 0.3},
    }
    f = assert_fires("TD511", site_timeline(BCE, stats))
    assert f.severity.value == "info" and "clamp(0, 1)" in f.fix

from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.testing import assert_fires, assert_silent

CE = {"fn": "cross_entropy", "classes": 5, "input_shape": [32, 5], "target_shape": [32]}


def _hist(counts, steps=6):
    return {s: list(counts) for s in range(1, steps + 1)}


def test_one_based_labels():
    f = assert_fires("TD511", site_timeline(CE, {}, labels=_hist([0, 8, 8, 8, 8])))
    assert "class 0 of 5 outputs is never a label" in f.title
    assert "1-based" in f.cause and "start token" in f.cause  # both readings, no verdict


def test_class_0_a_start_token_of_the_input_vocabulary_is_not_one_based_labels():
    """A seq2seq decoder fed `[SOS] + targets[:-1]` with SOS = 0: the targets are the ids its
    embedding reads one position on (ids_next), so the classes are the input vocabulary and id
    0 is a token read but never predicted."""
    seq = {**CE, "input_shape": [32, 5, 7], "target_shape": [32, 7]}
    stats = {s: {"ids_next": 1.0, "ids_same": 0.1} for s in range(1, 7)}
    assert_silent("TD511", site_timeline(seq, stats, labels=_hist([0, 8, 8, 8, 8])))
    chance = {s: {"ids_next": 0.2, "ids_same": 0.2} for s in range(1, 7)}  # tags, not tokens
    assert_fires("TD511", site_timeline(seq, chance, labels=_hist([0, 8, 8, 8, 8])))


def test_class_0_as_the_ignore_index_is_padding_not_one_based_labels():
    """A language model's targets padded with id 0 and `ignore_index=0`: the probe masks the
    padding out, so class 0 never occurs among the counted labels, by design."""
    padded = {**CE, "options": {"ignore_index": 0, "reduction": 1}}
    assert_silent("TD511", site_timeline(padded, {}, labels=_hist([0, 8, 8, 8, 8])))


def test_all_labels_identical():
    assert_fires("TD511", site_timeline(CE, {}, labels=_hist([0, 0, 32, 0, 0])))


def test_ignore_index_that_is_a_class_of_a_two_way_head():
    """codertimo/BERT-pytorch gives its next-sentence head (is_next in {0, 1}) the masked-LM
    criterion `NLLLoss(ignore_index=0)` (issues #49, #98): every 'not next' label is dropped,
    so the head only ever sees class 1. The finding names the ignore_index, not the data."""
    nsp = {"fn": "nll_loss", "classes": 2, "input_shape": [32, 2], "target_shape": [32]}
    nsp["options"] = {"ignore_index": 0, "reduction": 1}
    f = assert_fires("TD511", site_timeline(nsp, {}, labels=_hist([0, 16])))
    assert "ignore_index=0" in f.title and "ignore_index" in f.fix
    assert f.evidence["ignore_index"] == 0
    # Without ignore_index, one class only is still reported, with the data's words.
    plain = {**nsp, "options": {"reduction": 1}}
    f = assert_fires("TD511", site_timeline(plain, {}, labels=_hist([0, 16])))
    assert "ignore_index" not in f.title and "label column" in f.fix


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


MULTI = {**CE, "target_float": True, "target_dtype": "float32", "target_shape": [32, 5]}


def test_multi_hot_rows_into_cross_entropy():
    """Multi-label 0/1 rows given to cross_entropy as probabilities (rows sum to 0..k)."""
    stats = {
        s: {"t_min": 0.0, "t_max": 1.0, "t_rowsum_min": 0.0, "t_rowsum_max": 4.0}
        | {"t_rows_multi": 0.6, "loss": 5.0 - s / 10}
        for s in (1, 2, 4)
    }
    f = assert_fires("TD511", site_timeline(MULTI, stats))
    assert "multi-hot" in f.title and "BCEWithLogitsLoss" in f.fix
    assert f.evidence["row_sum_max"] == 4.0


def test_silent_on_soft_mixup_and_smoothed_probability_targets():
    """Rows that sum to 1 (label smoothing, mixup, distillation) or below 2 are probabilities;
    values outside [0, 1] are another encoding, not multi-hot labels."""
    for rows in (1.0, 1.0000001, 1.4):
        stats = {1: {"t_min": 0.0, "t_max": 0.9, "t_rowsum_min": 1.0, "t_rowsum_max": rows}}
        assert_silent("TD511", site_timeline(MULTI, stats))
    signed = {1: {"t_min": -1.0, "t_max": 1.0, "t_rowsum_min": -2.0, "t_rowsum_max": 3.0}}
    assert_silent("TD511", site_timeline(MULTI, signed))


def test_multi_hot_is_a_warning_and_soft_rows_are_not_called_0_1_labels():
    """The finding says rows of 0/1: rows of soft values in [0, 1] summing to 2 or more
    (smoothed or teacher scores) are another thing, not told apart here."""
    base = {"t_min": 0.0, "t_max": 1.0, "t_rowsum_min": 1.0, "t_rowsum_max": 3.0}
    hard = {s: base | {"t_frac": 0.0, "t_rows_multi": 0.5} for s in (1, 2, 4)}
    assert assert_fires("TD511", site_timeline(MULTI, hard)).severity.value == "warning"
    soft = {s: base | {"t_frac": 0.3, "t_rows_multi": 0.5} for s in (1, 2, 4)}
    assert_silent("TD511", site_timeline(MULTI, soft))

"""TD518 padding-in-loss on hand-built timelines."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _tl(
    ignore=-100,
    share=0.45,
    inner=0.0,
    rows=0.9,
    rmin=2,
    rmax=12,
    pad=0.0,
    fn="cross_entropy",
    reduction=1,
    classes=None,
):
    event = {
        "kind": "loss_input",
        "step": 1,
        "site": 0,
        "fn": fn,
        "source": "train.py:52",
        "target_shape": [32, 23],
        "classes": classes,
        "options": {"ignore_index": ignore, "reduction": reduction},
    }
    stats = {
        "0.pad_val": pad,
        "0.pad_rows": rows,
        "0.pad_share": share,
        "0.pad_inner": inner,
        "0.pad_rmin": rmin,
        "0.pad_rmax": rmax,
    }
    steps = {s: {"loss_inputs.stats": dict(stats)} for s in (1, 2, 3, 10)}
    return make_timeline(params=["fc.weight"], steps=steps, events=[event])


def test_padding_trained_as_tokens_is_a_warning_at_the_loss_line():
    f = assert_fires("TD518", _tl())
    assert f.severity is Severity.WARNING
    assert f.where.source == "train.py:52"
    assert "45% of its targets are padding (value 0)" in f.title
    assert "ignore_index=0" in f.fix
    assert f.evidence["padding_run"] == [2, 12]


def test_ignored_padding_is_silent():
    assert_silent("TD518", _tl(ignore=0))


def test_a_frequent_class_that_also_appears_inside_rows_is_silent():
    # Token classification: "O" ends most rows but fills their middle too.
    assert_silent("TD518", _tl(inner=0.3))


def test_a_fixed_suffix_is_silent():
    assert_silent("TD518", _tl(rmin=3, rmax=3))


def test_little_padding_is_info():
    assert assert_fires("TD518", _tl(share=0.1)).severity is Severity.INFO


def test_other_losses_are_not_judged():
    assert_silent("TD518", _tl(fn="mse_loss"))


def test_per_token_losses_reduced_by_the_caller_are_silent():
    # F.cross_entropy(..., reduction="none") * (tgt != PAD) / mask.sum(): the common masked
    # form; the padding is not trained (review: a warning on it).
    assert_silent("TD518", _tl(reduction=0))


def test_few_classes_is_info_a_class_can_end_every_row_by_design():
    # A sort task over 5 digits, or "has the event happened yet" labels over 2 classes: a real
    # class forms the trailing runs and appears nowhere else, as padding does.
    f = assert_fires("TD518", _tl(classes=5))
    assert f.severity is Severity.INFO
    assert "by design" in f.title
    assert assert_fires("TD518", _tl(classes=24)).severity is Severity.WARNING

"""TD212 nonfinite-masked on hand-built timelines (the events the numerics probe's autopsy writes)."""

from __future__ import annotations

from tests.rules._nonfinite import LOSS_EVENT, MASK_EVENT, nonfinite_tl
from traindoctor.testing import assert_fires, assert_silent


def test_td212_names_module_mask_and_measured_gradient():
    f = assert_fires("TD212", nonfinite_tl([MASK_EVENT, {**MASK_EVENT, "step": 4}], bad_steps=()))
    assert f.where.module == "norm"
    assert (f.where.op, f.where.source) == ("nan_to_num", "model.py:32")
    assert "gradient of 1 to the finite elements and 0" in f.cause
    assert "`div` at model.py:19" in f.cause


def test_td212_without_mask_details_and_silent_when_nothing_masked():
    e = {k: v for k, v in MASK_EVENT.items() if k != "mask"}
    f = assert_fires("TD212", nonfinite_tl([e], bad_steps=()))
    assert f.where.source == "model.py:19"
    assert_silent("TD212", nonfinite_tl([LOSS_EVENT]))


def test_td212_mask_written_on_purpose_is_info():
    # A -inf attention mask (masked_fill), a fully masked row's softmax NaN zeroed by where:
    # the masking idiom, not a broken module.
    from traindoctor.findings import Severity

    e = {**MASK_EVENT, "op": "masked_fill", "source": "model.py:9"}
    f = assert_fires("TD212", nonfinite_tl([e], bad_steps=()))
    assert f.severity is Severity.INFO
    assert "on purpose" in f.cause
    assert assert_fires("TD212", nonfinite_tl([MASK_EVENT], bad_steps=())).severity is (
        Severity.ERROR
    )

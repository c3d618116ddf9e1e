"""TD403 train-mode-during-validation on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["stem.conv.weight", "stem.conv.bias", "head.weight"]


def test_td403_reports_validation_forwards_in_train_mode():
    e = {
        "kind": "validation_in_train_mode",
        "step": 9,
        "model": "<model>",
        "modules": ["stem.bn", "block.bn"],
        "count": 2,
        "forwards": 3,
        "validating": False,
        "source": "val.py:7",
    }
    f = assert_fires("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=[e]))
    assert f.where.source == "val.py:7" and f.evidence["modules_in_train_mode"] == e["modules"]
    assert_silent("TD403", make_timeline(params=PARAMS, steps={1: {}}))

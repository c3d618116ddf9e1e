"""TD401 inference-tensor-params on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["stem.conv.weight", "stem.conv.bias", "head.weight"]


def _inference(params=("stem.conv.weight", "stem.conv.bias"), region="val.py:12", held=()):
    return {
        "kind": "inference_tensors",
        "step": 9,
        "params": list(params),
        "buffers": [],
        "count": len(params),
        "in_optimizer": list(held),
        "region_source": region,
        "region_step": 8,
        "found_at": "region",
    }


def test_td401_names_params_region_and_the_stale_optimizer():
    tl = make_timeline(params=PARAMS, steps={1: {}}, events=[_inference()])
    f = assert_fires("TD401", tl)
    assert f.step == 9
    assert f.where.params == ("stem.conv.bias", "stem.conv.weight")
    assert f.where.module == "stem.conv" and f.where.source == "val.py:12"
    assert "val.py:12" in f.cause and "TD111" in f.cause
    held = make_timeline(params=PARAMS, steps={1: {}}, events=[_inference(held=PARAMS[:2])])
    assert "TD111" not in assert_fires("TD401", held).cause


def test_td401_silent_without_inference_tensors():
    assert_silent("TD401", make_timeline(params=PARAMS, steps={1: {}, 2: {}}))

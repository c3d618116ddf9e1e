"""TD211 fp16-without-scaler on hand-built timelines."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = {"a.weight": {"shape": [10, 10]}, "b.weight": {"shape": [10, 10]}}


def _tl(dtype="float16", nonzero=(100, 100), scale=False):
    steps = {}
    for s in (1, 2, 3, 10):
        steps[s] = {
            "schedule.autocast": {"cpu": dtype},
            "schedule.grad_nonzero": {"a.weight": nonzero[0], "b.weight": nonzero[1]},
        }
        if scale:
            steps[s]["amp.scale"] = 65536.0
    return make_timeline(params=PARAMS, steps=steps, ended=True)


def test_underflow_under_fp16_is_an_error_with_the_layer():
    f = assert_fires("TD211", _tl(nonzero=(95, 30)))
    assert f.severity.value == "error"
    assert f.where.module == "b"
    assert f.evidence["zero_grad_share"] == {"b": 0.7, "a": 0.05}


def test_fp16_without_measured_underflow_is_a_warning():
    f = assert_fires("TD211", _tl(nonzero=(100, 99)))
    assert f.severity.value == "warning"


def test_bf16_or_a_scaler_is_silent():
    assert_silent("TD211", _tl(dtype="bfloat16", nonzero=(10, 10)))
    assert_silent("TD211", _tl(dtype="off"))
    assert_silent("TD211", _tl(nonzero=(10, 10), scale=True))

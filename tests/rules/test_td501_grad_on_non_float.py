"""TD501 grad-on-non-float on hand-built timelines."""

from __future__ import annotations

from tests.rules.test_td502_trainable_audit import LLM, PROJECTOR, VISION, audit
from traindoctor.testing import assert_fires, assert_silent, make_timeline

Q_PROJ = "llm.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"


def attempt(param: str = Q_PROJ, step: int = 7, **over) -> dict:
    e = {
        "kind": "grad_on_non_float",
        "step": step,
        "param": param,
        "component": "llm",
        "dtype": "uint8",
        "class": "Params4bit",
        "shape": [512, 1],
        "via": "requires_grad =",
        "error": "only Tensors of floating point and complex dtype can require gradients",
        "source": "train.py:42",
        "code": "p.requires_grad = True",
        "attached": True,
        "count": 1,
    }
    e.update(over)
    return e


def _tl(events, a=None):
    facts = {"audit": a} if a is not None else {}
    return make_timeline(params=["x.weight"], facts=facts, events=events, steps={1: {}})


def test_names_the_param_component_line_and_what_can_train():
    f = assert_fires("TD501", _tl([attempt()], audit(VISION, PROJECTOR, LLM)))
    assert f.severity.value == "error"
    assert f.step == 7
    assert f.where.module == "llm"
    assert f.where.params == (Q_PROJ,)
    assert f.where.source == "train.py:42"
    assert "4-bit quantized param" in f.title and Q_PROJ in f.title
    assert f.evidence["quantized_in_component"] == 14
    assert f.evidence["line"] == "p.requires_grad = True"
    can = f.evidence["can_train"]
    assert can["LoRA adapters"] == "`llm` 8 tensors (1,024 values)"
    assert can["float components"] == "`vision_tower` (4 tensors), `projector` (2 tensors)"
    assert can["float layers of quantized components"] == "`llm` 7 float tensors, 5 of them norms"
    assert "`llm` holds 14 such tensors" in f.cause
    assert "is_floating_point()" in f.fix and "LoRA adapters" in f.fix


def test_repeated_attempts_are_one_finding_with_a_count():
    events = [attempt(count=3), attempt(param="llm.x.k_proj.weight", step=8)]
    f = assert_fires("TD501", _tl(events, audit(LLM)))
    assert f.evidence["attempts"] == 4
    assert f.where.params == (Q_PROJ, "llm.x.k_proj.weight")


def test_int8_and_plain_integer_params_are_named_by_kind():
    f = assert_fires("TD501", _tl([attempt(dtype="int8", **{"class": "Int8Params"})]))
    assert "int8 quantized param" in f.title
    f = assert_fires("TD501", _tl([attempt(dtype="int64", **{"class": "Parameter"})]))
    assert "non-float (int64) param" in f.title


def test_without_an_audit_it_still_reports_the_request():
    f = assert_fires("TD501", _tl([attempt(component=None)]))
    assert f.where.module is None
    assert "can_train" not in f.evidence
    assert "not floating point" in f.cause


def test_silent_without_a_request():
    assert_silent("TD501", _tl([], audit(VISION, PROJECTOR, LLM)))

"""TD502 trainable-audit on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def row(component: str, **over) -> dict:
    """One component row as the audit probe writes it; everything float32 and trainable."""
    tensors = over.pop("tensors", 2)
    params = over.pop("params", 100)
    r = {
        "component": component,
        "class": "Linear",
        "params": params,
        "tensors": tensors,
        "trainable": params,
        "trainable_tensors": tensors,
        "frozen": 0,
        "frozen_tensors": 0,
        "dtypes": {"float32": tensors},
        "quantized": 0,
        "quantized_tensors": 0,
        "quantized_classes": {},
        "quantized_names": [],
        "lora": 0,
        "lora_tensors": 0,
        "lora_trainable_tensors": 0,
        "norm_tensors": 0,
        "float_tensors": tensors,
        "not_in_optimizer": [],
    }
    r.update(over)
    return r


def total(rows: list[dict]) -> dict:
    t = row("total", params=0, tensors=0)
    for r in rows:
        for k, v in r.items():
            if isinstance(v, int):
                t[k] += v
            elif isinstance(v, dict):
                for kk, vv in v.items():
                    t[k][kk] = t[k].get(kk, 0) + vv
            elif isinstance(v, list) and k != "component":
                t[k] = t[k] + v
    t.pop("component")
    return t


VISION = row(
    "vision_tower",
    params=1328,
    tensors=4,
    trainable=0,
    trainable_tensors=0,
    frozen=1328,
    frozen_tensors=4,
)
PROJECTOR = row("projector", params=1056)
LLM = row(
    "llm",
    params=25760,
    tensors=29,
    trainable=1024,
    trainable_tensors=8,
    frozen=24736,
    frozen_tensors=21,
    dtypes={"float32": 15, "uint8": 14},
    quantized=20480,
    quantized_tensors=14,
    quantized_classes={"Params4bit": 14},
    lora=1024,
    lora_tensors=8,
    lora_trainable_tensors=8,
    norm_tensors=5,
    float_tensors=15,
)


def audit(*rows: dict, step: int = 1, wrappers=()) -> dict:
    return {
        "components": list(rows),
        "totals": total(list(rows)),
        "wrappers": list(wrappers),
        "optimizer_known": True,
        "step": step,
    }


def _tl(a: dict | None, events=()) -> object:
    facts = {"audit": a} if a is not None else {}
    return make_timeline(params=["x.weight"], facts=facts, events=events, steps={1: {}})


def test_reports_the_table_per_component():
    f = assert_fires("TD502", _tl(audit(VISION, PROJECTOR, LLM, wrappers=["PeftModel"])))
    assert f.severity.value == "info"
    assert f.step == 1
    assert list(f.evidence)[:4] == ["vision_tower", "projector", "llm", "total"]
    assert f.evidence["llm"]["quantized"] == 20480
    assert f.evidence["llm"]["lora_tensors"] == 8
    assert f.evidence["total"]["trainable"] == 2080
    assert f.evidence["wrappers"] == ["PeftModel"]
    assert "2,080 of 28,144 values train (7.4%), in 10 of 35 tensors" in f.title
    assert "14 quantized tensors (Params4bit)" in f.title
    assert "`vision_tower` frozen" in f.cause
    assert "`projector` trains fully" in f.cause
    assert "`llm` trains only its 8 LoRA adapter tensors (1,024 values)" in f.cause


def test_trainable_params_no_optimizer_holds_are_listed():
    head = row("head", not_in_optimizer=["head.weight", "head.bias"])
    f = assert_fires("TD502", _tl(audit(PROJECTOR, head)))
    assert f.evidence["not_in_optimizer"] == ["head.weight", "head.bias"]


def test_a_changed_structure_says_as_of_which_step():
    events = [
        {"kind": "audit", "step": 1, "params": 1, "trainable": 0, "quantized": 0, "lora": 0},
        {"kind": "audit", "step": 7, "params": 1, "trainable": 1, "quantized": 0, "lora": 0},
    ]
    f = assert_fires("TD502", _tl(audit(VISION, step=7), events=events))
    assert f.step == 7
    assert f.evidence["audited_at_steps"] == [1, 7]
    assert "(as of step 7)" in f.title


def test_silent_without_an_audit():
    assert_silent("TD502", _tl(None))
    assert_silent("TD502", _tl({"components": [], "totals": total([])}))

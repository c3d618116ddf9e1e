"""TD208 in Ultralytics' words: the dominant part is weighted by its trainer gain (`box=`...).
Hand-built timelines with the facts the Ultralytics integration records."""

from __future__ import annotations

from traindoctor.testing import assert_fires, make_timeline

from ._ultralytics import facts

VALUES = {"box_loss": 8.45, "cls_loss": 0.7, "dfl_loss": 0.85}
GRADS = {"box_loss": 0.9, "cls_loss": 0.0, "dfl_loss": 0.1}


def _tl(recorded=None, values=VALUES, grads=GRADS):
    data = {s: {"loss.parts": dict(values), "loss.parts_grad": dict(grads)} for s in (1, 2, 3)}
    events = [{"kind": "log_call", "step": 1, "validating": False, "source": "train.py:9"}]
    return make_timeline(params=["w"], steps=data, events=events, facts=recorded)


def test_names_the_gain_of_the_dominant_part():
    f = assert_fires("TD208", _tl(facts(args={"box": 100.0})))
    assert f.evidence["dominant"] == "box_loss"
    assert f.evidence["ultralytics_gains"] == {"box": 100.0, "cls": 0.5, "dfl": 1.5}
    assert f.cause.endswith(
        " Ultralytics multiplies each part by its gain before the sum it back-propagates: "
        "here `box=100.0`, `cls=0.5`, `dfl=1.5`."
    )
    assert f.fix.startswith("Lower the `box` gain in `model.train(box=...)` (or the data/cfg yaml)")
    assert "the defaults are box=7.5, cls=0.5, dfl=1.5. (" in f.fix  # the rule's own fix after
    assert f.where.source == "train.py:9"
    assert f.severity.value == "warning"


def test_plain_wording_without_ultralytics_facts():
    plain = assert_fires("TD208", _tl())
    worded = assert_fires("TD208", _tl(facts()))
    assert "Ultralytics" not in plain.cause and "ultralytics_gains" not in plain.evidence
    assert worded.cause.startswith(plain.cause) and worded.fix.endswith(f"({plain.fix})")
    assert (worded.title, worded.severity, worded.where) == (
        plain.title,
        plain.severity,
        plain.where,
    )


def test_a_part_that_is_no_gain_keeps_the_plain_wording():
    values = {"seg": 8.45, "cls_loss": 0.7, "dfl_loss": 0.85}
    grads = {"seg": 0.9, "cls_loss": 0.0, "dfl_loss": 0.1}
    plain = assert_fires("TD208", _tl(values=values, grads=grads))
    assert assert_fires("TD208", _tl(facts(), values=values, grads=grads)) == plain

"""schema.py against the code that writes the timeline: every event kind and fact key written is
declared, every declared one has a writer, probes declare what they write; and a rule that
reads a failed probe's events is not judged (and never reads as healthy)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import torch

import traindoctor as td
from traindoctor import probes
from traindoctor.probes.params import ParamsProbe
from traindoctor.rules import all_rules
from traindoctor.schema import EVENTS, FACTS

SRC = Path(td.__file__).parent


def _timeline_expr(node: ast.AST) -> bool:
    """`timeline.facts`, `x.timeline.facts` or a rule-free `facts` dict of the Timeline."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "facts"
        and (
            (isinstance(node.value, ast.Name) and node.value.id in ("timeline", "tl"))
            or (isinstance(node.value, ast.Attribute) and node.value.attr == "timeline")
        )
    )


def _writes(path: Path) -> tuple[set[str], set[str]]:
    """(event kinds, fact keys) written by one module, from its AST."""
    events: set[str] = set()
    facts: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "event" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                events.add(node.args[1].value)
            elif f.attr in ("setdefault", "update") and _timeline_expr(f.value) and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant):
                    facts.add(arg.value)
                elif isinstance(arg, ast.Dict):
                    facts |= {k.value for k in arg.keys if isinstance(k, ast.Constant)}
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if (
                    isinstance(t, ast.Subscript)
                    and _timeline_expr(t.value)
                    and isinstance(t.slice, ast.Constant)
                ):
                    facts.add(t.slice.value)
    return events, facts


def _all_writes() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    events: dict[str, set[str]] = {}
    facts: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        if "rules" in path.relative_to(SRC).parts or path.name == "testing.py":
            continue
        ev, fa = _writes(path)
        rel = path.relative_to(SRC).as_posix()
        for k in ev:
            events.setdefault(k, set()).add(rel)
        for k in fa:
            facts.setdefault(k, set()).add(rel)
    return events, facts


def test_every_written_event_kind_and_fact_key_is_declared():
    events, facts = _all_writes()
    assert not set(events) - set(EVENTS), {k: events[k] for k in set(events) - set(EVENTS)}
    assert not set(facts) - set(FACTS), {k: facts[k] for k in set(facts) - set(FACTS)}


def test_every_declared_event_and_fact_is_written_somewhere():
    # Dead entries: declared but written by no code (the Doctor writes the unavailable_* facts
    # through diagnosis.unavailable(), a dict the AST scan cannot see).
    events, facts = _all_writes()
    assert set(EVENTS) - set(events) == set()
    dead = (
        set(FACTS) - set(facts) - {"unavailable_signals", "unavailable_events", "unavailable_facts"}
    )
    assert dead == set()


def test_every_declared_event_and_fact_has_a_declared_writer():
    by_probe_events = {e for cls in probes.PROBES for e in cls.provides_events}
    by_probe_facts = {f for cls in probes.PROBES for f in cls.provides_facts}
    assert [k for k, s in EVENTS.items() if k not in by_probe_events and not s.writers] == []
    assert [k for k, s in FACTS.items() if k not in by_probe_facts and not s.writers] == []


def test_a_probe_writes_what_it_declares():
    for cls in probes.PROBES:
        path = Path(inspect.getsourcefile(cls))
        events, facts = _writes(path)
        if cls.name == "loss":  # the loss-parts outputs come from its PartsMeter (parts.py)
            parts_events, parts_facts = _writes(path.with_name("parts.py"))
            events, facts = events | parts_events, facts | parts_facts
        assert set(cls.provides_events) <= events, (cls.name, set(cls.provides_events) - events)
        assert set(cls.provides_facts) <= facts, (cls.name, set(cls.provides_facts) - facts)
        for name in (*cls.provides_events, *cls.provides_facts):
            assert name in EVENTS or name in FACTS


def test_every_payload_is_a_typed_dict_with_step_and_kind():
    for kind, spec in EVENTS.items():
        keys = spec.type.__required_keys__ | spec.type.__optional_keys__
        assert {"step", "kind"} <= keys, kind
        assert spec.meaning, kind
    for name, spec in FACTS.items():
        assert spec.meaning and spec.type is not None, name


def test_rules_reading_a_failed_probes_events_are_not_judged(tmp_path, monkeypatch):
    # The params probe raises in attach: its `trainable` event and `params` fact are never
    # written. TD110 (nothing-trainable) reads both: it must be listed as not judged, not
    # report "nothing trainable" nor pass as healthy.
    def broken(self, ctx, rec):
        raise RuntimeError("params probe broke in attach")

    monkeypatch.setattr(ParamsProbe, "attach", broken)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(12):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    report = doc.report
    readers = {
        r.code
        for r in all_rules()
        if set(r.events) & set(ParamsProbe.provides_events)
        or set(r.facts) & set(ParamsProbe.provides_facts)
    }
    assert "TD110" in readers
    skipped = {s["code"]: s for s in report.outcome["skipped_rules"]}
    assert readers <= set(skipped)
    assert skipped["TD110"]["missing_events"] == ["trainable"]
    assert "params" in skipped["TD110"]["missing_facts"]
    assert not readers & {f.code for f in report.findings}
    md = (report.run_dir / "report.md").read_text("utf-8")
    assert "Not judged (a probe they read from failed): " in md
    assert "TD110" in md.split("Not judged", 1)[1].splitlines()[0]

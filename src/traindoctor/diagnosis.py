"""Run the rules over a timeline: shared by the live Doctor and `traindoctor report --rediagnose`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._guard import Guard
from .causality import link_consequences
from .findings import Finding, rank
from .rules._registry import Rule
from .timeline import Timeline


def diagnose(
    timeline: Timeline,
    rules: Iterable[Rule],
    guard: Guard,
    previous: Iterable[Finding] = (),
) -> list[Finding]:
    """Ranked findings of `rules`; a raising rule is recorded by `guard`, never propagated.

    Rules that need a signal whose probe failed are skipped (listed in the timeline's
    `skipped_rules` fact): a signal that stopped being recorded must not read as a symptom.
    A finding that an earlier pass also produced keeps the step it was first reported at.
    """
    if "models" not in timeline.facts:
        # Nothing was ever watched (no model, no optimizer): there is no training to judge,
        # and rules such as TD110 would misread the empty timeline.
        return []
    unavailable = set(timeline.facts.get("unavailable_signals", ()))
    skipped: list[dict[str, Any]] = []
    earlier = {f.key(): f for f in previous}
    fresh: dict[Any, Finding] = {}
    for r in rules:
        missing = sorted(unavailable.intersection(r.requires))
        if missing:
            skipped.append({"code": r.code, "missing_signals": missing})
            continue
        for f in guard.call(f"rule {r.code}", r.run, timeline.view(r)) or ():
            key = f.key()
            if key in fresh:
                continue
            old = earlier.get(key)
            fresh[key] = old.merged_with(f) if old is not None else f
    timeline.facts["skipped_rules"] = skipped
    return rank(link_consequences(list(fresh.values())))

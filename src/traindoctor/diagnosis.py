"""Run the rules over a timeline: shared by the live Doctor and `traindoctor report --rediagnose`."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Collection, Iterable
from typing import Any

from ._gc import collector_paused
from ._guard import Guard
from .causality import link_consequences
from .experiments.trial_record import EVENT as TRIAL_EVENT
from .experiments.trial_record import reattach
from .findings import Finding, rank
from .rules._registry import Rule
from .timeline import Timeline

#: (timeline fact naming what failed probes would have written, the probe attribute that
#: declares it, the rule attribute that declares its reads, the key in `skipped_rules`)
UNAVAILABLE = (
    ("unavailable_signals", "provides", "requires", "missing_signals"),
    ("unavailable_events", "provides_events", "events", "missing_events"),
    ("unavailable_facts", "provides_facts", "facts", "missing_facts"),
)


#: What each incremental rule keeps between the passes over one timeline, by (code, settings):
#: a later pass over the same timeline reads only the records written since (the live Doctor's
#: mid-run passes and close()); a new timeline (`report --rediagnose`) starts afresh.
_STATES: weakref.WeakKeyDictionary[Timeline, dict[Any, Any]] = weakref.WeakKeyDictionary()
#: An incremental rule keeps exact per-step data (TD108/TD210's loss curve: ~100 bytes a step);
#: its state starts afresh, from the bounded timeline, at each multiple of this many steps, so a
#: run of 10^6 steps holds no more of it than one of 2^16. Counted, not timed: same verdicts.
STATE_EPOCH_STEPS = 1 << 16


def unavailable(probes: Iterable[Any], disabled: Collection[str]) -> dict[str, list[str]]:
    """The signals, event kinds and fact keys of the probes that failed (`disabled` holds the
    guard's `probe <name>` entries), as the timeline facts `diagnose` reads."""
    failed = [p for p in probes if f"probe {p.name}" in disabled]
    return {
        fact: sorted({name for p in failed for name in getattr(p, attr, ())})
        for fact, attr, _, _ in UNAVAILABLE
    }


def diagnose(
    timeline: Timeline,
    rules: Iterable[Rule],
    guard: Guard,
    previous: Iterable[Finding] = (),
) -> list[Finding]:
    """Ranked findings of `rules`; a raising rule is recorded by `guard`, never propagated.

    Rules that read a signal, event or fact whose probe failed are not judged (listed in the
    timeline's `skipped_rules` fact): an output that stopped being recorded must not read as
    a symptom, nor its absence as health.
    A finding that an earlier pass also produced keeps the step it was first reported at.
    """
    if "models" not in timeline.facts:
        # Nothing was ever watched (no model, no optimizer): there is no training to judge,
        # and rules such as TD110 would misread the empty timeline.
        return []
    with collector_paused():  # its per-layer working set is garbage once it ends (_gc.py)
        return _diagnose(timeline, rules, guard, previous)


def _diagnose(
    timeline: Timeline, rules: Iterable[Rule], guard: Guard, previous: Iterable[Finding]
) -> list[Finding]:
    lost = _lost(timeline)
    skipped: list[dict[str, Any]] = []
    earlier = {f.key(): f for f in previous}
    fresh: dict[Any, Finding] = {}
    for r in rules:
        missing = _missing(r, lost)
        if any(missing.values()):
            skipped.append({"code": r.code, **{k: v for k, v in missing.items() if v}})
            continue
        for f in _run(r, timeline, guard) or ():
            key = f.key()
            if key in fresh:
                continue
            old = earlier.get(key)
            fresh[key] = old.merged_with(f) if old is not None else f
    timeline.facts["skipped_rules"] = skipped
    # The fix trials made at close (experiments/), recorded in the timeline: re-attached.
    return reattach(timeline.events(TRIAL_EVENT), rank(link_consequences(list(fresh.values()))))


def fold(timeline: Timeline, rules: Iterable[Rule], guard: Guard) -> None:
    """Advance the incremental rules' states over the records written since their last pass,
    their findings left for the next pass (which reports all that a state holds). O(new
    records): the live Doctor runs it when no pass has read the timeline for FOLD_EVERY steps
    (diagnosis_schedule.py), so no record is thinned from memory (timeline_retention.py)
    before these rules have read it exact, however rarely full passes are affordable."""
    if "models" not in timeline.facts:
        return
    lost = _lost(timeline)
    with collector_paused():
        for r in rules:
            if r.state is not None and not any(_missing(r, lost).values()):
                _run(r, timeline, guard)  # (a rule the passes do not judge is not folded either)


def _lost(timeline: Timeline) -> list[tuple[set[str], str, str]]:
    """(what failed probes would have written, the rule attribute declaring reads of it, the
    `skipped_rules` key), per kind of input."""
    return [
        (set(timeline.facts.get(fact, ())), declared, key) for fact, _, declared, key in UNAVAILABLE
    ]


def _missing(r: Rule, lost: list[tuple[set[str], str, str]]) -> dict[str, list[str]]:
    """What `r` reads that a failed probe would have written, by `skipped_rules` key."""
    return {
        key: sorted(names.intersection(getattr(r, declared)))
        for names, declared, key in lost
        if names
    }


def _run(r: Rule, timeline: Timeline, guard: Guard) -> list[Finding] | None:
    if r.state is None:
        return guard.call(f"rule {r.code}", r.run, timeline.view(r))
    key = (r.code, repr(r.settings))  # options may be unhashable
    found = guard.call(f"rule {r.code}", _incremental_pass, r, timeline, key)
    if found is None:
        # a pass that raised may have left its state half updated: the next one starts afresh
        with contextlib.suppress(TypeError):
            _STATES.get(timeline, {}).pop(key, None)
    return found


def _incremental_pass(r: Rule, timeline: Timeline, key: tuple[str, str]) -> list[Finding]:
    states = _STATES.setdefault(timeline, {})
    epoch = timeline.last_step // STATE_EPOCH_STEPS
    kept = states.get(key)
    if kept is None or kept[0] != epoch:
        # A new state each STATE_EPOCH_STEPS steps, read from the bounded timeline (its head,
        # thinned middle and exact tail): what a state keeps per step stays bounded too.
        kept = states[key] = (epoch, r.state() if r.state is not None else None)
    return r.run(timeline.view(r), None, kept[1])

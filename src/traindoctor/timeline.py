"""Timeline: per-step signals, one-off events and static run facts. The only input of rules.

Everything stored here is host-side, JSON-able Python data (probes read device values back in
batches before recording them), so rules never need torch and `traindoctor report` can re-run
them offline from timeline.jsonl.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from .findings import Finding, Severity, Where
from .schema import EVENTS, FACTS, SIGNALS, signal_of
from .timeline_retention import Retention
from .timeline_store import read_timeline


class Rule(Protocol):
    """What a TimelineView needs of a rule (rules/_registry.Rule is one): who it is, to fill
    in its findings, and what it declares it reads, for the strict view."""

    @property
    def code(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def severity(self) -> Severity: ...
    @property
    def priority(self) -> int: ...
    @property
    def requires(self) -> tuple[str, ...]: ...
    @property
    def events(self) -> tuple[str, ...]: ...
    @property
    def facts(self) -> tuple[str, ...]: ...


__all__ = ["SIGNALS", "Timeline", "TimelineView", "UndeclaredRead", "signal"]


def signal(name: str, meaning: str = "") -> str:
    """A probe's signal name, checked against schema.py (where its meaning is declared): a
    probe cannot record a signal no rule could know of. Fails at import."""
    declared = SIGNALS.get(name)
    if declared is None or (meaning and meaning != declared):
        raise ValueError(
            f"signal {name!r} is not declared with this meaning in traindoctor/schema.py"
        )
    return name


class Timeline:
    """Mutable store written by probes through the Doctor.

    Bounded: a long run's old records are thinned in memory (timeline_retention.py: each
    signal keeps its first and last records exact and the extremes and non-finite values of
    the middle), while the stream keeps every record on disk. `bounded=False` keeps all."""

    def __init__(self, *, bounded: bool = True) -> None:
        self.facts: dict[str, Any] = {}
        self.bounded = bounded
        self._retention: dict[str, Retention] = {}
        self._compacted: dict[str, int] = {}  # signal -> the last step compact() took
        # signal -> {step: value}: a rule reading one signal touches only that signal's steps.
        self._signals: dict[str, dict[int, Any]] = defaultdict(dict)
        self._events: list[dict[str, Any]] = []
        self._events_by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.last_step: int = 0  # number of completed optimizer steps
        # (signal, step) written since the stream last took them (None: nothing streams).
        self._changes: set[tuple[str, int]] | None = None
        # The writer appending this timeline to disk as the run goes (timeline_store.py).
        self.stream: Any = None
        # From from_jsonl: whether the run closed (a streamed file without its end mark was
        # killed), and what the reader skipped (a truncated last line).
        self.ended: bool = True
        self.load_notes: list[str] = []
        # Steps are written in increasing order almost always, so a signal's dict is kept in
        # step order as written and series() need not sort it. `_tail`: a signal's highest step;
        # `_rewrites`: writes below it (to an earlier step), which send incremental readers back
        # to the start; `_unsorted`: signals with a step inserted out of order, whose sorted
        # items `_sorted` caches until their next write.
        self._tail: dict[str, int] = {}
        self._rewrites: dict[str, int] = {}
        self._unsorted: set[str] = set()
        self._sorted: dict[str, list[tuple[int, Any]]] = {}

    # -- writing (probes) -------------------------------------------------------------------
    def record(self, step: int, name: str, value: Any, key: str | None = None) -> None:
        self._written(step, name)
        if key is None:
            self._signals[name][step] = value
        else:
            self._signals[name].setdefault(step, {})[key] = value
        if self._changes is not None:
            self._changes.add((name, step))

    def append(self, step: int, name: str, value: Any) -> None:
        """Add a value to a per-step list signal (e.g. one value per micro-batch)."""
        self._written(step, name)
        self._signals[name].setdefault(step, []).append(value)
        if self._changes is not None:
            self._changes.add((name, step))

    def _written(self, step: int, name: str) -> None:
        """Order bookkeeping of a write (O(1), on the probes' hot path)."""
        tail = self._tail.get(name)
        if tail is None or step > tail:
            self._tail[name] = step
        elif step < tail:
            self._rewrites[name] = self._rewrites.get(name, 0) + 1
            if step not in self._signals[name]:
                self._unsorted.add(name)
        if name in self._unsorted:
            self._sorted.pop(name, None)

    def compact(self) -> None:
        """Thin what a long run holds in memory (timeline_retention.py), from the records
        written since the last call: the Doctor calls it after each flush to disk, so the
        hot path (record, append) pays nothing for it. What the stream has not written yet
        stays."""
        if not self.bounded:
            return
        held: dict[str, set[int]] = {}
        for name, step in self._changes or ():
            held.setdefault(name, set()).add(step)
        for name, data in self._signals.items():
            retention = self._retention.get(name)
            if retention is None:
                retention = self._retention[name] = Retention(data)
            since = self._compacted.get(name)
            steps = list(data) if since is None else [s for s, _ in self.series_since(name, since)]
            if steps:
                self._compacted[name] = steps[-1]
            # Even with nothing new: records held at the last call may go now.
            retention.compact(steps, held.get(name))

    def event(self, step: int, kind: str, **facts: Any) -> None:
        event = {"step": step, "kind": kind, **facts}
        self._events.append(event)
        self._events_by_kind[kind].append(event)

    def get(self, step: int, name: str, default: Any = None) -> Any:
        """One signal at one step; O(1), for probes on the hot path."""
        data = self._signals.get(name)
        return default if data is None else data.get(step, default)

    def size(self) -> int:
        """Records held (signal values and events): what a diagnosis pass reads."""
        return sum(len(d) for d in self._signals.values()) + len(self._events)

    # -- reading ----------------------------------------------------------------------------
    def series(self, name: str) -> list[tuple[int, Any]]:
        """(step, value) of a signal in step order: a copy, without sorting when the steps
        were written in order (the usual case)."""
        return list(self._ordered(name))

    def series_since(self, name: str, step: int) -> list[tuple[int, Any]]:
        """(step, value) of a signal after `step`, in step order: O(records returned) when
        the steps were written in order."""
        data = self._signals.get(name)
        if not data:
            return []
        if name in self._unsorted:
            items = self._ordered(name)
            return items[bisect.bisect_right(items, step, key=_step_of) :]
        out = []
        for s in reversed(data):  # the newest first: stops at the first step not after `step`
            if s <= step:
                break
            out.append((s, data[s]))
        out.reverse()
        return out

    def rewrites(self, name: str) -> int:
        """How many writes to `name` went below its highest step so far: an incremental
        reader that saw a different count reads the signal again from the start."""
        return self._rewrites.get(name, 0)

    def _ordered(self, name: str) -> list[tuple[int, Any]] | Any:
        data = self._signals.get(name)
        if not data:
            return []
        if name not in self._unsorted:
            return data.items()  # written in step order
        cached = self._sorted.get(name)
        if cached is None:
            # Sorted once, kept until the next write to this signal.
            cached = self._sorted[name] = sorted(data.items(), key=_step_of)
        return cached

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if kind is None:
            return list(self._events)
        return list(self._events_by_kind.get(kind, ()))

    def signal_names(self, prefix: str = "") -> list[str]:
        return sorted(n for n, d in self._signals.items() if d and n.startswith(prefix))

    def steps(self) -> dict[int, dict[str, Any]]:
        """Per-step view of every signal (for persistence)."""
        out: dict[int, dict[str, Any]] = defaultdict(dict)
        for name, data in self._signals.items():
            for step, value in data.items():
                out[step][name] = value
        return dict(sorted(out.items()))

    def view(self, rule: Rule | None = None, *, strict: bool = False) -> TimelineView:
        """What `rule` sees. `strict` (tests) raises `UndeclaredRead` on a read the rule did not
        declare in `@rule(requires=, events=, facts=)`."""
        return TimelineView(self, rule, strict=strict)

    # -- persistence ------------------------------------------------------------------------
    def track_changes(self, on: bool = True) -> None:
        """From now on, remember which (signal, step) values are written (for the stream);
        everything already held counts as written. `on=False`: stop (nothing takes them)."""
        self._changes = {(n, s) for n, d in self._signals.items() for s in d} if on else None

    def take_changes(self) -> set[tuple[str, int]]:
        """The (signal, step) values written since the last call, forgotten here."""
        changes = self._changes
        if changes is None:
            return set()
        self._changes = set()
        return changes

    def events_from(self, index: int) -> list[dict[str, Any]]:
        """The events recorded from the `index`-th on, in order (the stream's new ones)."""
        return self._events[index:]

    def to_jsonl_lines(self) -> Iterator[str]:
        yield json.dumps({"type": "facts", "last_step": self.last_step, "facts": self.facts})
        for step, data in self.steps().items():
            yield json.dumps({"type": "step", "step": step, "signals": data}, default=str)
        for event in self._events:
            yield json.dumps({"type": "event", **event}, default=str)

    @classmethod
    def from_jsonl(cls, path: Path) -> Timeline:
        """A timeline.jsonl written whole at close (format 1) or streamed as the run went
        (format 2; `ended` is False when the run never closed). ValueError if it is not one."""
        tl = cls()
        loaded = read_timeline(Path(path), sink=tl)  # its signals go straight to tl, thinned
        tl.facts = loaded.facts
        tl.last_step = loaded.last_step
        for event in loaded.events:
            tl._events.append(event)
            tl._events_by_kind[event.get("kind", "")].append(event)
        tl.ended = loaded.ended
        tl.load_notes = loaded.notes
        return tl


_KEYWORD = {"signal": "requires", "event": "events", "fact": "facts"}


def _step_of(item: tuple[int, Any]) -> int:
    return item[0]


class UndeclaredRead(LookupError):
    """A rule read a signal, event or fact it did not declare (strict views only)."""


class TimelineView:
    """Read-only view handed to a rule; `finding()` fills in the rule's code, name and severity.

    A strict view (tests) checks every read against the rule's declaration, so a rule cannot
    depend on a probe's output without being skipped when that probe fails."""

    def __init__(
        self, timeline: Timeline, rule: Rule | None = None, *, strict: bool = False
    ) -> None:
        self._tl = timeline
        self._rule = rule
        self._strict = strict and rule is not None

    def _check(self, what: str, name: str | None, declared: tuple[str, ...], known: Any) -> None:
        if name is None or name not in declared or name not in known:
            assert self._rule is not None
            raise UndeclaredRead(
                f"{self._rule.code} reads {what} {name!r}: declare it in "
                f"@rule({_KEYWORD[what]}=...) "
                "(and in traindoctor/schema.py)"
            )

    @property
    def facts(self) -> Mapping[str, Any]:
        if self._strict:
            assert self._rule is not None
            return _DeclaredFacts(self, self._rule.facts)
        return self._tl.facts

    @property
    def last_step(self) -> int:
        return self._tl.last_step

    def series(self, name: str) -> list[tuple[int, Any]]:
        if self._strict:
            assert self._rule is not None
            self._check("signal", signal_of(name), self._rule.requires, SIGNALS)
        return self._tl.series(name)

    def series_since(self, name: str, step: int) -> list[tuple[int, Any]]:
        """The records of `name` after `step` (incremental rules: see rules/_incremental.py)."""
        if self._strict:
            assert self._rule is not None
            self._check("signal", signal_of(name), self._rule.requires, SIGNALS)
        return self._tl.series_since(name, step)

    def rewrites(self, name: str) -> int:
        """Writes to `name` below its highest step so far (Timeline.rewrites)."""
        return self._tl.rewrites(name)

    def at(self, name: str, step: int, default: Any = None) -> Any:
        """One signal at one step, O(1) (a rule that needs a few steps, not the series)."""
        if self._strict:
            assert self._rule is not None
            self._check("signal", signal_of(name), self._rule.requires, SIGNALS)
        return self._tl.get(step, name, default)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if self._strict:
            assert self._rule is not None
            self._check("event", kind, self._rule.events, EVENTS)
        return self._tl.events(kind)

    def signal_names(self, prefix: str = "") -> list[str]:
        if self._strict:
            assert self._rule is not None
            self._check("signal", signal_of(prefix.rstrip(".")), self._rule.requires, SIGNALS)
        return self._tl.signal_names(prefix)

    def fact(self, name: str, default: Any = None) -> Any:
        if self._strict:
            assert self._rule is not None
            self._check("fact", name, self._rule.facts, FACTS)
        return self._tl.facts.get(name, default)

    def finding(
        self,
        *,
        title: str,
        step: int | None,
        evidence: dict[str, Any] | None = None,
        where: Where | None = None,
        cause: str = "",
        fix: str = "",
        confidence: float = 1.0,
        severity: Severity | None = None,
    ) -> Finding:
        if self._rule is None:
            raise RuntimeError("finding() needs a view created for a rule")
        return Finding(
            code=self._rule.code,
            name=self._rule.name,
            severity=severity or self._rule.severity,
            title=title,
            step=step,
            evidence=evidence or {},
            where=where or Where(),
            cause=cause,
            fix=fix,
            priority=self._rule.priority,
            confidence=confidence,
        )


class _DeclaredFacts(Mapping[str, Any]):
    """`view.facts` of a strict view: every key read is checked against the declaration."""

    def __init__(self, view: TimelineView, declared: tuple[str, ...]) -> None:
        self._view = view
        self._declared = declared

    def __getitem__(self, name: str) -> Any:
        self._view._check("fact", name, self._declared, FACTS)
        return self._view._tl.facts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view._tl.facts)

    def __len__(self) -> int:
        return len(self._view._tl.facts)

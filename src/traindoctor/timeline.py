"""Timeline: per-step signals, one-off events and static run facts. The only input of rules.

Everything stored here is host-side, JSON-able Python data (probes read device values back in
batches before recording them), so rules never need torch and `traindoctor report` can re-run
them offline from timeline.jsonl.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .findings import Finding, Severity, Where

if TYPE_CHECKING:
    from .rules._registry import Rule

SIGNALS: dict[str, str] = {}
"""Every signal name a probe may record, with a one-line meaning. Rules' `requires` are checked
against this registry."""


def signal(name: str, meaning: str) -> str:
    SIGNALS[name] = meaning
    return name


class Timeline:
    """Mutable store written by probes through the Doctor."""

    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}
        self._steps: dict[int, dict[str, Any]] = defaultdict(dict)
        self._events: list[dict[str, Any]] = []
        self.last_step: int = 0  # number of completed optimizer steps

    # -- writing (probes) -------------------------------------------------------------------
    def record(self, step: int, name: str, value: Any, key: str | None = None) -> None:
        if key is None:
            self._steps[step][name] = value
        else:
            self._steps[step].setdefault(name, {})[key] = value

    def append(self, step: int, name: str, value: Any) -> None:
        """Add a value to a per-step list signal (e.g. one value per micro-batch)."""
        self._steps[step].setdefault(name, []).append(value)

    def event(self, step: int, kind: str, **facts: Any) -> None:
        self._events.append({"step": step, "kind": kind, **facts})

    def get(self, step: int, name: str, default: Any = None) -> Any:
        """One signal at one step; O(1), for probes on the hot path."""
        data = self._steps.get(step)
        return default if data is None else data.get(name, default)

    def has_event(self, kind: str) -> bool:
        return any(e["kind"] == kind for e in self._events)

    # -- reading ----------------------------------------------------------------------------
    def series(self, name: str) -> list[tuple[int, Any]]:
        return [(s, d[name]) for s, d in sorted(self._steps.items()) if name in d]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self._events if kind is None or e["kind"] == kind]

    def signal_names(self, prefix: str = "") -> list[str]:
        return sorted({n for d in self._steps.values() for n in d if n.startswith(prefix)})

    def view(self, rule: Rule | None = None) -> TimelineView:
        return TimelineView(self, rule)

    # -- persistence ------------------------------------------------------------------------
    def to_jsonl_lines(self) -> Iterator[str]:
        yield json.dumps({"type": "facts", "last_step": self.last_step, "facts": self.facts})
        for step, data in sorted(self._steps.items()):
            yield json.dumps({"type": "step", "step": step, "signals": data}, default=str)
        for event in self._events:
            yield json.dumps({"type": "event", **event}, default=str)

    @classmethod
    def from_jsonl(cls, path: Path) -> Timeline:
        tl = cls()
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}:{lineno}: not a timeline record ({exc.msg})"
                    ) from None
                kind = rec.pop("type", None)
                if kind == "facts":
                    tl.facts = rec.get("facts", {})
                    tl.last_step = rec.get("last_step", 0)
                elif kind == "step":
                    tl._steps[int(rec["step"])].update(rec.get("signals", {}))
                elif kind == "event":
                    tl._events.append(rec)
        return tl


class TimelineView:
    """Read-only view handed to a rule; `finding()` fills in the rule's code, name and severity."""

    def __init__(self, timeline: Timeline, rule: Rule | None = None) -> None:
        self._tl = timeline
        self._rule = rule

    @property
    def facts(self) -> dict[str, Any]:
        return self._tl.facts

    @property
    def last_step(self) -> int:
        return self._tl.last_step

    def series(self, name: str) -> list[tuple[int, Any]]:
        return self._tl.series(name)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self._tl.events(kind)

    def signal_names(self, prefix: str = "") -> list[str]:
        return self._tl.signal_names(prefix)

    def fact(self, name: str, default: Any = None) -> Any:
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

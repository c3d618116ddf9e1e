"""Findings: what traindoctor reports. Plain data, serialisable to findings.json (schema 1)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 0, "warning": 1, "info": 2}[self.value]


@dataclass(frozen=True)
class Where:
    """Where a finding comes from: module, parameter names, autograd op, user source line."""

    module: str | None = None
    params: tuple[str, ...] = ()
    op: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "params": list(self.params),
            "op": self.op,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Where:
        data = data or {}
        return cls(
            module=data.get("module"),
            params=tuple(data.get("params") or ()),
            op=data.get("op"),
            source=data.get("source"),
        )


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem: the measured symptom, its evidence, where, the cause and the fix."""

    code: str
    name: str
    severity: Severity
    title: str
    step: int | None
    evidence: dict[str, Any] = field(default_factory=dict)
    where: Where = field(default_factory=Where)
    cause: str = ""
    fix: str = ""
    # Ranking among findings of the same severity: lower means closer to a root cause.
    priority: int = 50
    confidence: float = 1.0
    first_step: int | None = None
    last_step: int | None = None
    count: int = 1
    # In a distributed job's merged report: the ranks that showed it (its step and evidence
    # are the first of them's); () in a single process's report and in a rank's own.
    ranks: tuple[int, ...] = ()

    @property
    def docs(self) -> str:
        return f"traindoctor explain {self.code}"

    def key(self) -> tuple[str, str | None, tuple[str, ...], str | None]:
        """Identity for de-duplication: the same code at the same place is one finding."""
        return (self.code, self.where.module, self.where.params, self.where.op)

    def merged_with(self, later: Finding) -> Finding:
        """The same finding derived again by a later diagnosis pass over the longer timeline:
        keep the step it was first reported at, take the refreshed evidence. `count` is the
        rule's own (how often the symptom occurred), not the number of passes."""
        first = min(s for s in (self.first_step, later.first_step, self.step) if s is not None)
        last_candidates = [
            s for s in (self.last_step, later.last_step, later.step) if s is not None
        ]
        return replace(
            later,
            step=self.step if self.step is not None else later.step,
            first_step=first,
            last_step=max(last_candidates) if last_candidates else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "severity": self.severity.value,
            "title": self.title,
            "step": self.step,
            "evidence": _jsonable(self.evidence),
            "cause": self.cause,
            "fix": self.fix,
            "where": self.where.to_dict(),
            "first_step": self.first_step if self.first_step is not None else self.step,
            "last_step": self.last_step if self.last_step is not None else self.step,
            "count": self.count,
            "confidence": self.confidence,
            "priority": self.priority,
            "docs": self.docs,
            **({"ranks": list(self.ranks)} if self.ranks else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            code=data["code"],
            name=data["name"],
            severity=Severity(data["severity"]),
            title=data["title"],
            step=data.get("step"),
            evidence=data.get("evidence") or {},
            where=Where.from_dict(data.get("where")),
            cause=data.get("cause", ""),
            fix=data.get("fix", ""),
            priority=data.get("priority", 50),
            confidence=data.get("confidence", 1.0),
            first_step=data.get("first_step"),
            last_step=data.get("last_step"),
            count=data.get("count", 1),
            ranks=tuple(int(r) for r in data.get("ranks") or ()),
        )


def rank(findings: list[Finding]) -> list[Finding]:
    """Errors first; then root causes before their consequences; then earliest; then most certain."""
    return sorted(
        findings,
        key=lambda f: (
            f.severity.rank,
            f.priority,
            f.step if f.step is not None else 1 << 30,
            -f.confidence,
            f.code,
        ),
    )


def status_of(findings: list[Finding]) -> str:
    severities = {f.severity for f in findings}
    if Severity.ERROR in severities:
        return "failing"
    if Severity.WARNING in severities:
        return "warning"
    return "healthy"


def _jsonable(value: Any) -> Any:
    """Evidence is built from host-side Python values; make sure floats like inf survive JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, int | str | bool) or value is None:
        return value
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    return str(value)

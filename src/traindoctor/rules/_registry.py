"""Rule metadata and registration: `@rule(...)` on a pure function of the timeline."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..findings import Finding, Severity
from ..schema import EVENTS, FACTS, SIGNALS
from ..timeline import TimelineView

CODE_RE = re.compile(r"^TD[1-7]\d{2}$")
NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
REQUIRED_SECTIONS = (
    "## What it detects",
    "## Why it matters",
    "## How it is measured",
    "## Example",
    "## Fix",
    "## Known false positives",
)
FAMILIES = {
    "1": "gradient flow",
    "2": "numerics",
    "3": "gradient path",
    "4": "evaluation",
    "5": "setup and data",
    "6": "distributed",
    "7": "experiments",
}

RuleFunc = Callable[..., Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity
    summary: str
    requires: tuple[str, ...]
    priority: int
    func: RuleFunc
    since: str = "0.1.0"
    #: event kinds and fact keys the rule reads (schema.py), as `requires` lists its signals:
    #: a rule is not judged when the probe that writes one of them failed.
    events: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()
    #: options set by configuration (`[tool.traindoctor.rules.TDxxx]`, `--option`), over the
    #: defaults of the rule function's keyword-only parameters; see `configured()`.
    settings: tuple[tuple[str, Any], ...] = ()
    #: an incremental rule's state factory (rules/_incremental.py): the rule is called as
    #: `func(view, state, **options)` and reads only the records written since its last pass.
    state: Callable[[], Any] | None = None

    @property
    def family(self) -> str:
        return FAMILIES[self.code[2]]

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    @property
    def options(self) -> dict[str, Any]:
        sig = inspect.signature(self.func)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    @property
    def source(self) -> dict[str, Any]:
        return {
            "file": inspect.getsourcefile(self.func),
            "line": inspect.getsourcelines(self.func)[1],
        }

    def configured(self, **options: Any) -> Rule:
        """This rule with these options set (checked by `traindoctor.config`)."""
        merged = {**dict(self.settings), **options}
        return dataclasses.replace(self, settings=tuple(sorted(merged.items())))

    def run(
        self, view: TimelineView, options: dict[str, Any] | None = None, state: Any = None
    ) -> list[Finding]:
        """The rule's findings; an incremental rule goes on from `state` (a new one: a fresh
        pass over the whole timeline, with the same findings)."""
        opts = {**dict(self.settings), **(options or {})}
        if self.state is None:
            return list(self.func(view, **opts))
        return list(self.func(view, self.state() if state is None else state, **opts))

    def explain(self) -> str:
        head = f"# {self.name} ({self.code})\n\nFamily: {self.family} · Severity: {self.severity.value}"
        opts = self.options
        options = ""
        if opts:
            first = next(iter(opts))
            options = (
                "\n\n## Options\n"
                + "\n".join(f"- `{k}` = {v!r}" for k, v in opts.items())
                + f"\n\nSet one with `traindoctor run --option {self.code}.{first}=VALUE` or in "
                f"pyproject.toml under `[tool.traindoctor.rules.{self.code}]` (`{first} = ...`)."
            )
        return f"{head}\n\n{self.summary}\n\n{self.doc}{options}\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "family": self.family,
            "severity": self.severity.value,
            "status": "stable",
            "since": self.since,
            "summary": self.summary,
            "requires": list(self.requires),
            "events": list(self.events),
            "facts": list(self.facts),
            "options": {k: _json_default(v) for k, v in self.options.items()},
            "explanation": self.doc,
            "source": self.source,
        }


_RULES: dict[str, Rule] = {}


def rule(
    *,
    code: str,
    name: str,
    severity: Severity,
    summary: str,
    requires: tuple[str, ...] = (),
    events: tuple[str, ...] = (),
    facts: tuple[str, ...] = (),
    priority: int = 50,
    state: Callable[[], Any] | None = None,
) -> Callable[[RuleFunc], RuleFunc]:
    """Register a rule. `requires`, `events` and `facts` name every signal, event kind and fact
    key it reads (declared in schema.py; unknown names fail here). `priority` orders findings
    of one severity: root causes get low numbers. `state`: a factory of what the rule keeps
    between passes to read only new records (rules/_incremental.py)."""
    if not CODE_RE.match(code):
        raise ValueError(f"rule code {code!r} must look like TD1xx..TD7xx")
    if not NAME_RE.match(name):
        raise ValueError(f"rule name {name!r} must be kebab-case")
    for what, names, known in (
        ("signal", requires, SIGNALS),
        ("event", events, EVENTS),
        ("fact", facts, FACTS),
    ):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"rule {code} reads undeclared {what}(s) {unknown}: see schema.py")

    def decorate(func: RuleFunc) -> RuleFunc:
        if code in _RULES and _RULES[code].func.__qualname__ != func.__qualname__:
            raise ValueError(f"rule code {code} registered twice")
        _RULES[code] = Rule(
            code=code,
            name=name,
            severity=severity,
            summary=summary,
            requires=requires,
            priority=priority,
            events=events,
            facts=facts,
            func=func,
            state=state,
        )
        return func

    return decorate


def select(rules: list[Rule], select: Iterable[str] = (), ignore: Iterable[str] = ()) -> list[Rule]:
    """Filter by code prefix, as ruff's --select/--ignore do (`TD1` selects the whole family)."""
    sel = [s.upper() for s in select]
    ign = [s.upper() for s in ignore]
    out = []
    for r in rules:
        if sel and not any(r.code.startswith(s) for s in sel):
            continue
        if any(r.code.startswith(s) for s in ign):
            continue
        out.append(r)
    return out


def registered() -> dict[str, Rule]:
    """The rules registered so far, by code (rules/__init__.py imports the built-in ones)."""
    return _RULES


def _unregister(code: str) -> None:
    """For tests that inject a rule."""
    _RULES.pop(code, None)


def _json_default(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool | type(None)) else repr(value)

"""What a tracker is told about the findings: one markdown line each, table rows, alert
texts and the run's status with its counts. Plain data, no tracker library here."""

from __future__ import annotations

from collections.abc import Iterable

from ...findings import Finding, Severity, status_of

TABLE_COLUMNS = ("code", "severity", "name", "step", "title", "where", "cause", "fix")
# A tracker's tag / alert value is kept short (MLflow takes 5000 characters; an alert is read
# on a phone): the report has the rest.
MAX_TEXT = 1000


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """{"errors": n, "warnings": n, "infos": n}."""
    out = {"errors": 0, "warnings": 0, "infos": 0}
    for f in findings:
        out[{"error": "errors", "warning": "warnings"}.get(f.severity.value, "infos")] += 1
    return out


def status(findings: list[Finding]) -> str:
    """failing / warning / healthy, as the report says it."""
    return status_of(findings)


def status_line(findings: list[Finding], steps: int) -> str:
    c = counts(findings)
    return (
        f"{status(findings)}: {c['errors']} error(s), {c['warnings']} warning(s), "
        f"{c['infos']} info after {steps} step(s)"
    )


def where_text(f: Finding) -> str:
    w = f.where
    parts = []
    if w.module:
        parts.append(f"module {w.module}")
    if w.params:
        shown = ", ".join(w.params[:3]) + (f" (+{len(w.params) - 3})" if len(w.params) > 3 else "")
        parts.append(f"params {shown}")
    if w.op:
        parts.append(f"op {w.op}")
    if w.source:
        parts.append(f"at {w.source}")
    return "; ".join(parts)


def line(f: Finding) -> str:
    """One markdown line: severity, code, step, title, where, fix."""
    step = f" at step {f.step}" if f.step is not None else ""
    where = where_text(f)
    text = f"- **{f.severity.value} {f.code}** `{f.name}`{step}: {f.title}"
    if where:
        text += f" ({where})"
    if f.fix:
        text += f" Fix: {_short(f.fix, 300)}"
    return text


def markdown(findings: list[Finding], heading: str | None = None) -> str:
    lines = [f"### {heading}", ""] if heading else []
    lines += [line(f) for f in findings] or ["No findings."]
    return "\n".join(lines)


def table_rows(findings: list[Finding]) -> list[list[object]]:
    return [
        [f.code, f.severity.value, f.name, f.step, f.title, where_text(f), f.cause, f.fix]
        for f in findings
    ]


def tag_value(f: Finding) -> str:
    """A finding as a tag value: `error: <title> (<where>)`."""
    where = where_text(f)
    return _short(f"{f.severity.value}: {f.title}" + (f" ({where})" if where else ""), MAX_TEXT)


def alert_title(f: Finding) -> str:
    return _short(f"traindoctor {f.code} ({f.name})", 200)


def alert_text(f: Finding) -> str:
    parts = [f.title]
    where = where_text(f)
    if where:
        parts.append(f"Where: {where}.")
    if f.cause:
        parts.append(f"Cause: {f.cause}")
    if f.fix:
        parts.append(f"Fix: {f.fix}")
    parts.append(f"More: `traindoctor explain {f.code}`.")
    return _short(" ".join(parts), MAX_TEXT)


def is_error(f: Finding) -> bool:
    return f.severity is Severity.ERROR


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

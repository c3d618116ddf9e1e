"""Console summary with rich, laid out like pytest: one block per finding, a short summary,
and a stats line."""

from __future__ import annotations

import io
import sys

from rich.console import Console
from rich.text import Text

from ..findings import Severity
from .curves import curves_text
from .model import Report
from .text import (
    evidence_text,
    location,
    not_judged_text,
    outcome_text,
    summary_line,
    where_text,
)

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _render(report: Report, console: Console) -> None:
    console.rule(f"traindoctor · {report.framework} · {report.steps} steps", style="dim")
    outcome = outcome_text(report)
    if outcome:
        console.print(Text(outcome, style="magenta"))
    for f in report.findings:
        head = Text()
        head.append(location(f))
        head.append(f"{f.code} {f.name}", style=_STYLE[f.severity])
        head.append(f"  {f.title}")
        console.print(head)
        rows = [
            ("evidence", evidence_text(f)),
            ("curves", curves_text(f)),
            ("where", where_text(f)),
            ("cause", f.cause),
            ("fix", f.fix),
            ("docs", f.docs),
        ]
        for label, value in rows:
            if value:
                line = Text(f"  {label:<9} ", style="dim")
                line.append(value)
                console.print(line)
    if report.internal_errors:
        console.print(
            Text(
                f"{len(report.internal_errors)} internal error(s) in traindoctor were caught; "
                "your training was not affected: "
                + "; ".join(f"{e['where']}: {e['error']}" for e in report.internal_errors[:3]),
                style="dim",
            )
        )
    not_judged = not_judged_text(report)
    if not_judged:
        console.print(Text(not_judged, style="dim"))
    if report.findings:
        console.rule("short summary", style="dim")
        for f in report.findings:
            at = f" at step {f.step}" if f.step is not None else ""
            src = f" ({f.where.source})" if f.where.source else ""
            line = Text(f"{f.severity.value.upper():<8}", style=_STYLE[f.severity])
            line.append(f"{f.code} {f.name}{at}{src}")
            console.print(line)
    if report.write_error:
        console.print(Text(f"traindoctor: {report.write_error}", style="magenta"))
    style = "bold red" if report.errors else ("yellow" if report.warnings else "green")
    # The path goes on its own line: a rule title that is too wide gets cut short.
    console.rule(
        Text(summary_line(report, with_path=False), style=style), characters="═", style=style
    )
    if report.run_dir is not None:
        console.print(Text(f"report: {report.run_dir}/report.md", style="dim"), soft_wrap=True)


def print_report(report: Report, console: Console | None = None) -> None:
    _render(report, console or Console(file=sys.stderr, soft_wrap=False))


def render_text(report: Report, width: int = 100) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    _render(report, console)
    return buf.getvalue()

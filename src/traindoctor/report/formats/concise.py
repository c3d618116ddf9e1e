"""`concise`: one line per finding, `path:line:col: CODE [severity] title`, then a summary
line (editors' problem matchers read the first form)."""

from __future__ import annotations

from ..model import Report
from ..text import summary_line
from ._common import label, location, script


def render(report: Report) -> str:
    lines = []
    for f in report.findings:
        loc = location(f)
        if loc is not None and loc.line is not None:
            head = f"{loc.path}:{loc.line}:1:"
        else:
            head = f"{loc.path if loc else script(report) or '-'}:"
        lines.append(f"{head} {label(f)}")
    lines.append(summary_line(report))
    return "\n".join(lines) + "\n"

"""`grouped`: the findings under the file they point at (those without a line last)."""

from __future__ import annotations

from ..model import Report
from ..text import summary_line
from ._common import label, location, script


def render(report: Report) -> str:
    groups: dict[str, list[str]] = {}
    for f in report.findings:
        loc = location(f)
        path = loc.path if loc else (script(report) or "(the run)")
        at = f"{loc.line}:1" if loc and loc.line is not None else "-"
        groups.setdefault(path, []).append(f"  {at:<8} {label(f)}")
    lines = []
    for path, rows in groups.items():
        lines += [path, *rows, ""]
    lines.append(summary_line(report))
    return "\n".join(lines) + "\n"

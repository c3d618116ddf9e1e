"""`pylint`: `path:line: [CODE] title`, as pylint's parseable output; errors and warnings only
(an info finding is no problem)."""

from __future__ import annotations

from ..model import Report
from ._common import location, one_line, problems, script


def render(report: Report) -> str:
    lines = []
    for f in problems(report):
        loc = location(f)
        path = loc.path if loc else (script(report) or "-")
        line = loc.line if loc and loc.line is not None else 1
        lines.append(f"{path}:{line}: [{f.code}] {one_line(f.title)}")
    return "".join(line + "\n" for line in lines)

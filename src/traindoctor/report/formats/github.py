"""`github`: GitHub Actions workflow commands, one annotation per finding at the user's line:
`::error title=traindoctor (TD101),file=train.py,line=12,col=1::message`.

error -> error, warning -> warning. Info findings are no problem (a healthy `check` has several)
and get no annotation: they are listed in a folded `::group::` of the log instead. Escaped as the workflow-command docs and
@actions/core do: `%`, CR and LF in the message; those and `:` and `,` in a property. The file
is relative to GITHUB_WORKSPACE when it is set (the checkout), else to the working directory;
a finding without a user-source line is annotated without file and line.
"""

from __future__ import annotations

import os

from ...findings import Severity
from ..model import Report
from ._common import location, message, one_line, problems, relative_to

COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render(report: Report) -> str:
    base = os.environ.get("GITHUB_WORKSPACE") or os.getcwd()
    lines = []
    for f in problems(report):
        props = [("title", f"traindoctor ({f.code})")]
        loc = location(f)
        if loc is not None:
            props.append(("file", relative_to(loc.path, base)))
            if loc.line is not None:
                props += [("line", str(loc.line)), ("col", "1")]
        head = ",".join(f"{k}={escape_property(v)}" for k, v in props)
        lines.append(f"::{COMMAND[f.severity]} {head}::{escape_data(message(f))}")
    infos = [f for f in report.findings if f.severity is Severity.INFO]
    if infos:
        lines.append(f"::group::traindoctor: {len(infos)} info finding(s), not problems")
        for f in infos:
            at = f" ({f.where.source})" if f.where.source else ""
            lines.append(f"  {f.code} {f.name}{at}: {one_line(f.title)}")
        lines.append("::endgroup::")
    return "".join(line + "\n" for line in lines)

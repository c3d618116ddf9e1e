"""`azure`: Azure Pipelines logging commands,
`##vso[task.logissue type=error;sourcepath=train.py;linenumber=12;columnnumber=1;code=TD101;]title`.
Azure has errors and warnings only: info findings are left out."""

from __future__ import annotations

from ..model import Report
from ._common import location, one_line, problems


def _escape(text: str, prop: bool = False) -> str:
    out = text.replace("%", "%AZP25").replace("\r", "%0D").replace("\n", "%0A")
    return out.replace(";", "%3B").replace("]", "%5D") if prop else out


def render(report: Report) -> str:
    lines = []
    for f in problems(report):
        props = [("type", f.severity.value)]
        loc = location(f)
        if loc is not None:
            props.append(("sourcepath", loc.path))
            if loc.line is not None:
                props += [("linenumber", str(loc.line)), ("columnnumber", "1")]
        props.append(("code", f.code))
        head = "".join(f"{k}={_escape(v, prop=True)};" for k, v in props)
        lines.append(f"##vso[task.logissue {head}]{_escape(one_line(f.title))}")
    return "".join(line + "\n" for line in lines)

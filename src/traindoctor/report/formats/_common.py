"""What the formats share: a finding's user-source location, the script, one-line messages."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...findings import Finding, Severity
from ..model import Report


@dataclass(frozen=True)
class Location:
    path: str  # as the run recorded it: relative to where the run started, or absolute
    line: int | None


def location(f: Finding) -> Location | None:
    """`Where.source` ("train.py:12") as a path and a line; None where the finding has no
    user-source line (a whole-run finding, a module or parameters only)."""
    source = f.where.source
    if not source:
        return None
    path, sep, line = source.rpartition(":")
    if sep and line.strip().isdigit() and path:
        return Location(path, int(line))
    return Location(source, None)


def script(report: Report) -> str | None:
    """The script (or module) the run executed, as it was named on the command line."""
    tl = report.timeline
    value = tl.facts.get("script") if tl is not None else None
    return str(value) if value else None


def relative_to(path: str, base: str | os.PathLike[str]) -> str:
    """`path` (relative to the working directory, or absolute) relative to `base`, with `/`;
    unchanged when it lies outside `base`."""
    try:
        full = Path(path).resolve()
        return full.relative_to(Path(base).resolve()).as_posix()
    except (ValueError, OSError):
        return Path(path).as_posix()


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def message(f: Finding) -> str:
    """The finding in a few lines: title, cause, fix and where to read more."""
    parts = [f.title]
    if f.cause:
        parts.append(f"Cause: {f.cause}")
    if f.fix:
        parts.append(f"Fix: {f.fix}")
    parts.append(f"({f.docs})")
    return "\n".join(parts)


def label(f: Finding) -> str:
    return f"{f.code} [{f.severity.value}] {one_line(f.title)}"


def problems(report: Report) -> list[Finding]:
    """The errors and warnings: what the annotation formats annotate. An info finding is no
    problem (a healthy `check` has several: the experiments' measurements), so a healthy run
    gets no annotation."""
    return [f for f in report.findings if f.severity is not Severity.INFO]

"""Output formats of the findings, as ruff's `--output-format`: a registry name -> module.

Each module renders a `Report` to a string (`render(report) -> str`) and says whether it is
machine-readable (`MACHINE`: stdout then carries that output alone). No torch and no renderer is
imported here: the command line checks a format's name before the script starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ...errors import UsageError

if TYPE_CHECKING:
    from ..model import Report

# name -> module of this package (ruff's names; `text` is ruff's former name of `full`).
FORMATS = {
    "full": "full",
    "concise": "concise",
    "grouped": "grouped",
    "json": "json_",
    "json-lines": "json_lines",
    "junit": "junit",
    "github": "github",
    "gitlab": "gitlab",
    "pylint": "pylint",
    "azure": "azure",
    "sarif": "sarif",
}
ALIASES = {"text": "full"}
DEFAULT = "full"
# Those whose output is for a program, not a person (the script's stdout goes to stderr).
MACHINE = frozenset({"json", "json-lines", "junit", "github", "gitlab", "pylint", "azure", "sarif"})


def names() -> list[str]:
    return list(FORMATS)


def check(value: object, where: str = "--output-format") -> str:
    """The format's canonical name, or a one-line UsageError listing the accepted values."""
    if isinstance(value, str):
        name = value.strip().lower()
        name = ALIASES.get(name, name)
        if name in FORMATS:
            return name
    raise UsageError(
        f"{where} got {value!r}; pass one of: {', '.join(FORMATS)} (e.g. --output-format github)"
    )


def is_machine(name: str) -> bool:
    return check(name) in MACHINE


def render(name: str, report: Report) -> str:
    """The report in this format, ending with a newline (an empty string for nothing to say
    in line-oriented formats)."""
    module = importlib.import_module(f"{__name__}.{FORMATS[check(name)]}")
    return module.render(report)

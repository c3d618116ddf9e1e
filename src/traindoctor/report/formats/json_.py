"""`json`: findings.json (schema 1), what `--json` printed."""

from __future__ import annotations

import json

from ..model import Report


def render(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"

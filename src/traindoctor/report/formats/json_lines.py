"""`json-lines`: one finding of findings.json per line (nothing for a healthy run)."""

from __future__ import annotations

import json

from ..model import Report


def render(report: Report) -> str:
    return "".join(json.dumps(f.to_dict(), sort_keys=True) + "\n" for f in report.findings)

"""`gitlab`: a GitLab Code Quality report (a JSON array). The fingerprint hashes what
identifies a finding (code, file, module, parameters, op), not its measured numbers, so
identical runs (and reruns with other numbers) give the same one. Errors and warnings only:
an info finding is no problem, and a healthy run gives `[]`."""

from __future__ import annotations

import hashlib
import json

from ...findings import Severity
from ..model import Report
from ._common import location, message, problems, script

SEVERITY = {Severity.ERROR: "critical", Severity.WARNING: "major"}


def render(report: Report) -> str:
    issues = []
    seen: dict[str, int] = {}
    for f in problems(report):
        loc = location(f)
        path = loc.path if loc else (script(report) or ".")
        identity = json.dumps(
            [f.code, path, f.where.module, list(f.where.params), f.where.op], sort_keys=True
        )
        n = seen.get(identity, 0)
        seen[identity] = n + 1
        digest = hashlib.sha256(f"{identity}#{n}".encode()).hexdigest()
        issues.append(
            {
                "description": f"{f.code} {message(f)}",
                "check_name": f"traindoctor/{f.code} {f.name}",
                "fingerprint": digest,
                "severity": SEVERITY[f.severity],
                "location": {
                    "path": path,
                    "lines": {"begin": loc.line if loc and loc.line is not None else 1},
                },
            }
        )
    return json.dumps(issues, indent=2) + "\n"

"""`sarif`: SARIF 2.1.0 (GitHub code scanning, VS Code's SARIF viewer). tool.driver.rules is the
whole catalog (fullDescription and help from each rule's docstring, as `traindoctor explain`
prints it); each finding is a result with its ruleId, level and, where it has a user-source
line, a physicalLocation (artifactLocation.uri relative to GITHUB_WORKSPACE or the working
directory, region). An info finding is a result of kind "informational" (level "none"):
recorded, not a problem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..._version import __version__
from ...findings import Severity
from ..model import Report
from ._common import location, message, relative_to

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
# A result's level; SARIF requires "none" for a result whose kind is not "fail".
RESULT_LEVEL = {**LEVEL, Severity.INFO: "none"}


def _home_page() -> str | None:
    """The project's documentation URL, where the installed package's metadata declares one."""
    try:
        from importlib.metadata import metadata

        meta = metadata("traindoctor")
    except Exception:  # noqa: BLE001  (not installed as a distribution)
        return None
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("documentation", "docs", "homepage") and url.strip():
            return url.strip()
    return meta.get("Home-page") or None


def _rules() -> list[dict[str, Any]]:
    from ...rules import all_rules

    home = _home_page()
    out = []
    for r in all_rules():
        entry: dict[str, Any] = {
            "id": r.code,
            "name": r.name,
            "shortDescription": {"text": r.summary},
            "fullDescription": {"text": r.doc or r.summary},
            "help": {"text": r.explain(), "markdown": r.explain()},
            "defaultConfiguration": {"level": LEVEL[r.severity]},
            "properties": {"family": r.family},
        }
        if home:
            entry["helpUri"] = f"{home.rstrip('/')}#{r.code.lower()}"
        out.append(entry)
    return out


def _uri(path: str) -> str:
    """Relative to the checkout in a GitHub workflow (code scanning resolves it there), else to
    the working directory; a file outside it as a file:// URI."""
    rel = relative_to(path, os.environ.get("GITHUB_WORKSPACE") or os.getcwd())
    return Path(rel).as_uri() if Path(rel).is_absolute() else rel


def render(report: Report) -> str:
    rules = _rules()
    index = {r["id"]: i for i, r in enumerate(rules)}
    results = []
    for f in report.findings:
        result: dict[str, Any] = {
            "ruleId": f.code,
            "kind": "informational" if f.severity is Severity.INFO else "fail",
            "level": RESULT_LEVEL[f.severity],
            "message": {"text": message(f)},
            "properties": {"step": f.step, "name": f.name},
        }
        if f.code in index:
            result["ruleIndex"] = index[f.code]
        loc = location(f)
        if loc is not None:
            physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(loc.path)}}
            if loc.line is not None:
                physical["region"] = {"startLine": loc.line, "startColumn": 1}
            result["locations"] = [{"physicalLocation": physical}]
        results.append(result)
    driver: dict[str, Any] = {
        "name": "traindoctor",
        "version": __version__,
        "semanticVersion": __version__,
        "rules": rules,
    }
    home = _home_page()
    if home:
        driver["informationUri"] = home
    doc = {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{"tool": {"driver": driver}, "results": results}],
    }
    return json.dumps(doc, indent=2) + "\n"

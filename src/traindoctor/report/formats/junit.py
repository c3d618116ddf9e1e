"""`junit`: JUnit XML for CI test reports. One testsuite per run; a testcase per finding (a
failure for an error or a warning, a pass with its text for an info) and one per rule that ran
without a finding, so the CI counts what was checked; a rule not judged (its probe failed) is
skipped. No timestamps: identical runs give identical files."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ...findings import Severity
from ..model import Report
from ._common import location, message, one_line, script


def _rules_run(report: Report) -> list[str]:
    """The codes of the rules the run was judged with, when the run recorded them."""
    tl = report.timeline
    config = tl.facts.get("config") if tl is not None else None
    rules = config.get("rules") if isinstance(config, dict) else None
    return [str(c) for c in rules] if isinstance(rules, list) else []


def _names() -> dict[str, str]:
    try:
        from ...rules import all_rules

        return {r.code: r.name for r in all_rules()}
    except Exception:  # noqa: BLE001  (names only decorate the test cases)
        return {}


def render(report: Report) -> str:
    run = script(report) or "run"
    suites = ET.Element("testsuites", name="traindoctor")
    suite = ET.SubElement(suites, "testsuite", name=f"traindoctor {run}")
    tests = failures = skipped = 0
    for f in report.findings:
        loc = location(f)
        attrs = {"classname": f"traindoctor.{f.code}", "name": f"{f.code} {f.name}"}
        if loc is not None:
            attrs["name"] += f" at {f.where.source}"
            attrs["file"] = loc.path
            if loc.line is not None:
                attrs["line"] = str(loc.line)
        case = ET.SubElement(suite, "testcase", attrs)
        tests += 1
        if f.severity is Severity.INFO:
            ET.SubElement(case, "system-out").text = message(f)
            continue
        failures += 1
        failure = ET.SubElement(case, "failure", message=one_line(f.title), type=f.severity.value)
        failure.text = message(f) + (f"\nstep: {f.step}" if f.step is not None else "")
    found = {f.code for f in report.findings}
    not_judged = {str(s.get("code")) for s in (report.outcome or {}).get("skipped_rules") or []}
    names = _names()
    for code in _rules_run(report):
        if code in found:
            continue
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"traindoctor.{code}",
            name=f"{code} {names.get(code, '')}".strip(),
        )
        tests += 1
        if code in not_judged:
            ET.SubElement(case, "skipped", message="not judged: a probe it reads from failed")
            skipped += 1
    for element in (suites, suite):
        element.set("tests", str(tests))
        element.set("failures", str(failures))
        element.set("errors", "0")
        element.set("skipped", str(skipped))
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )

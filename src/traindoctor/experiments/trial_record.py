"""A fix trial's result in the timeline and on its finding (experiments/trials.py runs them).

Each trial is recorded when it is made, as a `fix_trial` event (the finding's code, its key
and the trial dict; probes/capture.py writes it), and every diagnosis of the timeline puts it
back on the finding the rules derive again (diagnosis.py): `traindoctor report --rediagnose`
gives the findings the live close gave. Torch-free: re-diagnosing a run imports no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..findings import Finding, rank

EVENT = "fix_trial"
DEMOTE = 30  # priority added to a finding whose fix does not help (ranks after the others)


def payload(finding: Finding) -> dict[str, Any]:
    """The `fix_trial` event's payload for a finding that carries its trial."""
    code, module, params, op = finding.key()
    return {
        "code": code,
        "key": [code, module, list(params), op],
        "trial": finding.evidence["trial"],
    }


def reattach(events: list[dict[str, Any]], findings: list[Finding]) -> list[Finding]:
    """The findings, each one a `fix_trial` event was recorded for carrying that trial (as
    at close: the same cause, rank and confidence); the list itself when there is none."""
    if not events:
        return findings
    trials: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in events:
        key = e.get("key")
        if isinstance(key, list | tuple) and len(key) == 4 and isinstance(e.get("trial"), dict):
            code, module, params, op = key
            trials[(code, module, tuple(params or ()), op)] = e["trial"]
    out, moved = [], False
    for f in findings:
        trial = trials.get(f.key())
        if trial is None or "trial" in f.evidence:
            out.append(f)
            continue
        out.append(with_trial(f, trial))
        moved = True
    return rank(out) if moved else findings


def with_trial(f: Finding, trial: dict[str, Any]) -> Finding:
    """The finding with its trial in the evidence, a sentence in the cause, and ranked lower
    (half as confident) when the fix does not help."""
    evidence = {**f.evidence, "trial": trial}
    verdict = trial["verdict"]
    cause = f.cause
    if verdict == "fix does not help":
        # What a short replay cannot see, said with it: later instability, held-out data.
        note = trial.get("note")
        cause = (
            f"{cause}. Measured on a copy: {trial['summary']} (the fix does not help within "
            f"{trial['steps']} steps on these batches; "
            + (f"{note}; " if note else "")
            + "a trial this short sees neither later instability nor held-out data)"
        )
    elif "summary" in trial:
        note = f"; {trial['note']}" if trial.get("note") else ""
        cause = f"{cause}. Measured on a copy: {trial['summary']} ({verdict}{note})"
    elif verdict.startswith("not run"):
        cause = f"{cause}. Fix trial {verdict}"
    if verdict == "fix does not help":
        return dataclasses.replace(
            f,
            evidence=evidence,
            cause=cause,
            priority=f.priority + DEMOTE,
            confidence=round(f.confidence * 0.5, 3),
        )
    return dataclasses.replace(f, evidence=evidence, cause=cause)

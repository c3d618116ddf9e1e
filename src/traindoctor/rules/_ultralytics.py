"""What the Ultralytics integration recorded about the trainer, as rules read it.

The integration (integrations/ultralytics.py) records facts only, under
`facts["ultralytics"]`: the trainer `args` (gains, `plots`, ...), the `user_callbacks` per
event (`name (path:line)`), the `validations` run so far (kind, counts the validator
collected), `metric_lines` (the user line that puts a metric in `trainer.metrics`) and
`yolo_model_is_trained_model`. The rules that speak Ultralytics (TD111, TD208, TD401, TD402,
TD404, TD405) word their findings from these, each in its own family's `_ultralytics.py`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..findings import Finding
from ..timeline import TimelineView

# The prefix of metrics a validation run by a user's callback produced (the integration's).
CALLBACK_VAL = "callback_val/"


def ultralytics_facts(tl: TimelineView) -> dict[str, Any] | None:
    """The trainer's facts when the integration attached to an Ultralytics trainer, else None."""
    facts = tl.fact("ultralytics")
    if not isinstance(facts, dict) or "args" not in facts:
        return None  # recorded only at attach: an unattached run is not worded for Ultralytics
    return facts


def validations(facts: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    """The validations recorded so far (`kind`: "train", "callback" or "final")."""
    vals = [v for v in facts.get("validations") or () if isinstance(v, dict)]
    return vals if kind is None else [v for v in vals if v.get("kind") == kind]


def callbacks_text(facts: dict[str, Any], events: tuple[str, ...]) -> str:
    """`` `event`: name (path:line), ...`` for the user's callbacks of these events."""
    user = facts.get("user_callbacks") or {}
    return "; ".join(f"`{e}`: {', '.join(user[e])}" for e in events if user.get(e))


def names(metrics: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in metrics[:4])
    return shown + (f" and {len(metrics) - 4} more" if len(metrics) > 4 else "")


def with_note(f: Finding, note: str = "", fix: str = "", evidence: dict | None = None) -> Finding:
    """`f` with `note` appended to its cause and `fix` put before its own fix (kept in
    parentheses); idempotent, so a finding worded twice reads the same."""
    if not note and not fix and not evidence:
        return f
    cause = f.cause if note in f.cause else f.cause + note
    new_fix = f.fix if not fix or fix in f.fix else f"{fix} ({f.fix})"
    return replace(f, cause=cause, fix=new_fix, evidence={**(f.evidence or {}), **(evidence or {})})

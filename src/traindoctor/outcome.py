"""How the run ended and what traindoctor cost it: the `outcome` and `overhead` facts."""

from __future__ import annotations

import traceback
from typing import Any

from ._source import is_user_file, relpath
from .budget import Budget
from .errors import StopTraining
from .governor import summary_line
from .timeline import Timeline


def record_outcome(
    timeline: Timeline, exc: BaseException | None, step: int, attached: bool, budget: Budget
) -> None:
    """Write the `outcome` fact (normal end, --max-steps stop, interrupt or exception with
    the user's line) and the `overhead` fact (time spent, sampling, governor windows)."""
    outcome: dict[str, Any] = {"ended": "normal", "step": step}
    stops = timeline.events("stopped")
    if isinstance(exc, StopTraining) or stops:
        outcome["ended"] = "max_steps"
        outcome["step"] = timeline.last_step
        if stops:
            outcome["reason"] = stops[-1].get("reason", "max_steps")
    elif isinstance(exc, KeyboardInterrupt):
        outcome["ended"] = "interrupted"
        outcome["exception"] = type(exc).__name__
        outcome["signal"] = getattr(exc, "signal_name", "SIGINT")
    elif exc is not None and not (isinstance(exc, SystemExit) and exc.code in (0, None)):
        outcome["ended"] = "exception"
        outcome["exception"] = f"{type(exc).__name__}: {exc}".strip()
        outcome["source"] = exception_source(exc)
    if not attached:
        outcome["observed"] = False  # no model or optimizer was ever seen
    timeline.facts["outcome"] = outcome
    budget.governor.closing()
    overhead: dict[str, Any] = {
        "seconds_in_traindoctor": round(budget.spent, 4),
        "final_sample_interval": budget.interval,
        # what every step costs, as a share of the user's step time (last measurement)
        "floor_share": round(budget.floor_share, 5) if budget.floor_share is not None else None,
        # (step, measured share of step time, interval chosen) per governor window
        "windows": [[s, round(r, 5), i] for s, r, i in budget.history],
        # the side-by-side ratio as measured from step times, and as predicted (governor.py)
        **budget.overhead(),
    }
    overhead["summary"] = summary_line(overhead)
    timeline.facts["overhead"] = overhead
    # findings.json carries the ratios (its `run`), report.md their line; close_s follows
    # once close()'s rules ran (StepDriver._diagnosed).
    outcome["overhead"] = {k: overhead[k] for k in OVERHEAD_IN_FINDINGS if k in overhead}


# The `overhead` keys that findings.json repeats under `run.overhead`.
OVERHEAD_IN_FINDINGS = (
    "ratio",
    "ratio_low",
    "ratio_high",
    "noisy",
    "plain_step_s",
    "every_step_x",
    "sampled_step_x",
    "step_clock",
    "predicted_ratio",
    "predicted_step_s",
    "predicted_sampled_step_x",
    "seconds_in_traindoctor",
    "summary",
)


def exception_source(exc: BaseException) -> str | None:
    """The last user line in the exception's traceback (file:line)."""
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if is_user_file(frame.f_code.co_filename):
            found = f"{relpath(frame.f_code.co_filename)}:{lineno}"
    return found

"""Shared wording for renderers: evidence lines, where lines, the summary line."""

from __future__ import annotations

from typing import Any

from ..findings import Finding, Severity
from .model import Report


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(fmt_value(v) for v in value[:8])
        return f"[{shown}{', …' if len(value) > 8 else ''}]"
    if isinstance(value, dict):
        items = list(value.items())
        shown = ", ".join(f"{k}: {fmt_value(v)}" for k, v in items[:6])
        return "{" + shown + (", …" if len(items) > 6 else "") + "}"
    return str(value)


def evidence_text(f: Finding) -> str:
    return "; ".join(f"{k}={fmt_value(v)}" for k, v in f.evidence.items())


def where_text(f: Finding) -> str:
    w = f.where
    parts = []
    if w.module:
        parts.append(f"module {w.module}")
    if w.params:
        shown = ", ".join(w.params[:6]) + (
            f", … ({len(w.params)} in all)" if len(w.params) > 6 else ""
        )
        parts.append(f"params {shown}")
    if w.op:
        parts.append(f"op {w.op}")
    if w.source:
        parts.append(f"source {w.source}")
    return " · ".join(parts) or "—"


def location(f: Finding) -> str:
    return f"{f.where.source}: " if f.where.source else ""


def summary_line(report: Report, with_path: bool = True) -> str:
    n_err = sum(f.severity is Severity.ERROR for f in report.findings)
    n_warn = sum(f.severity is Severity.WARNING for f in report.findings)
    n_info = sum(f.severity is Severity.INFO for f in report.findings)
    bits = []
    if n_err:
        bits.append(f"{n_err} error{'s' if n_err != 1 else ''}")
    if n_warn:
        bits.append(f"{n_warn} warning{'s' if n_warn != 1 else ''}")
    if n_info:
        bits.append(f"{n_info} info")
    if bits:
        head = ", ".join(bits)
    elif report.steps == 0:
        # Not "healthy": a script that raised (or ended) before its first step was not judged.
        head = "nothing diagnosed: no training step ran"
    else:
        head = "healthy: no problems found"
    line = head
    if bits or report.steps:
        line += f" in {report.steps} step{'s' if report.steps != 1 else ''}"
    if with_path and report.run_dir is not None:
        line += f" · report: {report.run_dir}/report.md"
    return line


def outcome_text(report: Report) -> str | None:
    if report.ranks is not None:
        return ranks_text(report)
    out = report.outcome or {}
    ended = out.get("ended")
    done = f"after {report.steps} optimizer step{'s' if report.steps != 1 else ''}"
    note = None
    if ended == "exception":
        src = f" at {out['source']}" if out.get("source") else ""
        note = f"the run raised {out.get('exception')}{src} in step {out.get('step')} ({done})"
    elif ended == "interrupted":
        sig = out.get("signal") or "KeyboardInterrupt"
        note = f"the run was interrupted by {sig} in step {out.get('step')} ({done})"
    elif ended == "max_steps":
        if out.get("reason") == "max_steps_without_optimizer_step":
            note = (
                f"the run was stopped under --max-steps {done}: backward kept running "
                "without an optimizer step"
            )
        else:
            note = f"the run was ended by --max-steps {done}"
    elif ended == "killed":
        note = (
            "the run never closed (killed: SIGKILL, out of memory; or still running): "
            f"re-diagnosed from the timeline it had written, {done}"
        )
    if out.get("observed") is False:
        # What it checked before the first step (TD501, TD511) may still be reported.
        why = "" if report.findings else ", so there was nothing to diagnose"
        seen = (
            "traindoctor saw no training: the script ran no backward pass and no "
            f"optimizer step{why}"
        )
        note = f"{note}; {seen}" if note else seen
    return note


def not_judged_text(report: Report) -> str | None:
    """The rules skipped because a probe they read from failed: not judged, which is not
    the same as healthy."""
    skipped = (report.outcome or {}).get("skipped_rules") or []
    if not skipped:
        return None
    codes = ", ".join(str(s.get("code")) for s in skipped)
    return f"not judged (a probe they read from failed): {codes}"


def rank_ended_text(entry: dict[str, Any]) -> str:
    """How one rank of a distributed job ended, from its entry in the job's `ranks`."""
    n, steps, status = entry.get("rank"), int(entry.get("steps") or 0), entry.get("status")
    done = f"after {steps} optimizer step{'s' if steps != 1 else ''}"
    if status == "killed":
        return (
            f"rank {n} never closed (killed: SIGKILL, out of memory, or ended by its launcher); "
            f"its timeline on disk ends at step {steps}"
        )
    if status == "running":
        return (
            f"rank {n} had not closed when this report was merged (still running, or hung) {done}"
        )
    if status == "missing":
        return (
            f"rank {n} was not watched (traindoctor never attached there: an integration that "
            "watches rank 0 only, or the rank ended before its first step)"
        )
    note = outcome_text(Report(findings=[], steps=steps, outcome=entry.get("exit") or {}))
    if not note:
        return f"rank {n} ended normally {done}"
    if note.startswith("the run "):
        return f"rank {n} {note[len('the run ') :]}"
    return f"rank {n}: {note}"


def ranks_text(report: Report) -> str | None:
    """The job's outcome line: each rank that did not end normally (None when all did), the
    killed ones first (the others' errors are often what a rank's death did to them)."""
    ranks = sorted(report.ranks or [], key=lambda e: e.get("status") != "killed")
    notes = [
        rank_ended_text(e)
        for e in ranks
        if e.get("status") != "closed"
        or (e.get("exit") or {}).get("ended") not in (None, "normal", "max_steps")
        or (e.get("exit") or {}).get("observed") is False
    ]
    return "; ".join(notes) or None

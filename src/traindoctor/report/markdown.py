"""report.md: the same findings, for reading in an editor or a pull request."""

from __future__ import annotations

from ..findings import Finding
from .audit import render_audit
from .curves import curves_text, plot_name
from .gradpath import render_gradient_path
from .model import Report
from .numerics import render_numerics
from .plots import plots_off
from .text import (
    evidence_text,
    not_judged_text,
    outcome_text,
    rank_ended_text,
    summary_line,
    where_text,
)

PLOTS_DIR = "plots"  # where report/__init__.py writes the PNGs


def render_markdown(report: Report) -> str:
    lines = [f"# traindoctor report: {report.shown_status}", "", f"_{summary_line(report)}_", ""]
    outcome = outcome_text(report)
    if outcome:
        lines += [f"> {outcome}", ""]
    lines += _ranks(report)
    if not report.findings:
        lines += ["No problems found.", ""]
    not_judged = not_judged_text(report)
    if not_judged:
        lines += [f"_{not_judged[0].upper()}{not_judged[1:]}._", ""]
    if report.findings:
        lines += ["| severity | code | name | step | where |", "|---|---|---|---|---|"]
        for f in report.findings:
            lines.append(
                f"| {f.severity.value} | {f.code} | {f.name} | {f.step if f.step is not None else ''} "
                f"| {f.where.source or f.where.module or ''} |"
            )
        lines.append("")
    # The curve plots are drawn beside a run's report (write_visual), not a merged job's.
    drawn = plots_off() is None and report.timeline is not None
    for rank, f in enumerate(report.findings, 1):
        lines += [
            f"## {f.code} {f.name} ({f.severity.value})",
            "",
            f"**{f.title}**",
            "",
            f"- **Evidence:** {evidence_text(f) or '—'}",
            *_curves(rank, f, drawn),
            f"- **Where:** {where_text(f)}",
            f"- **Cause:** {f.cause or '—'}",
            f"- **Fix:** {f.fix or '—'}",
            f"- **First seen:** step {f.step}" + (f" (seen {f.count}×)" if f.count > 1 else ""),
            *([f"- **Ranks:** {', '.join(map(str, f.ranks))}"] if f.ranks else []),
            f"- **Docs:** `{f.docs}`",
            "",
        ]
    lines += render_audit(report.findings)
    if report.timeline is not None:
        lines += render_numerics(report.timeline)
        lines += render_gradient_path(report.timeline)
    overhead = (report.outcome or {}).get("overhead") or {}
    if overhead.get("summary"):
        # Measured from the run's step times; how it compares to the cost model (governor.py).
        lines += [f"_traindoctor's overhead: {overhead['summary']}._", ""]
    if report.internal_errors:
        lines += ["## Internal errors (caught; training unaffected)", ""]
        lines += [
            f"- {e['where']} at step {e.get('step')}: `{e['error']}`"
            for e in report.internal_errors
        ]
        lines.append("")
    return "\n".join(lines)


def _curves(rank: int, f: Finding, drawn: bool) -> list[str]:
    """The finding's loss curves: one line, and the plot written beside the report."""
    text = curves_text(f)
    if text is None:
        return []
    image = f" ![{f.code} curves]({PLOTS_DIR}/{plot_name(rank, f)}.png)" if drawn else ""
    return [f"- **Curves:** {text}{image}"]


def _ranks(report: Report) -> list[str]:
    """A distributed job's ranks: what became of each (its own report is in its folder)."""
    if report.ranks is None:
        return []
    lines = [
        f"## Ranks (world size {report.world_size})",
        "",
        "| rank | status | steps | ended | report |",
        "|---|---|---|---|---|",
    ]
    for e in report.ranks:
        ended = (e.get("exit") or {}).get("ended") or "—"
        lines.append(
            f"| {e.get('rank')} | {e.get('status')} | {e.get('steps')} | {ended} "
            f"| {e.get('dir', '')}/report.md |"
        )
    lines.append("")
    lines += [f"- {rank_ended_text(e)}" for e in report.ranks]
    lines.append("")
    return lines

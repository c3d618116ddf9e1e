"""The "Gradient path" section of report.md: the sampled walk of the loss's backward, per op
of the loss code (from the timeline alone, no torch)."""

from __future__ import annotations

from ..timeline import Timeline

MAX_ROWS = 30


def render_gradient_path(tl: Timeline) -> list[str]:
    walks = tl.events("gradient_path")
    walks = [e for e in walks if e.get("lines_known")] or walks
    if not walks:
        return []
    e = walks[-1]
    nodes = e.get("nodes") or []
    lines = [
        "## Gradient path",
        "",
        f"Backward of step {e['step']}, walked node by node ({e.get('nodes_walked', 0)} "
        f"autograd nodes, {e.get('nodes_measured', e.get('nodes_walked', 0))} measured, "
        f"{1000 * (e.get('seconds') or 0):.1f} ms). Rows: ops created by the loss code and ops "
        "that zero gradient.",
        "",
        "| # | op | source | grad in | grad out | zeroed | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in nodes[:MAX_ROWS]:
        zeroed = "—" if n.get("zeroed") is None else f"{n['zeroed']:.1%}"
        lines.append(
            f"| {n.get('index')} | `{n.get('op')}` | {n.get('source') or '—'} | "
            f"{_g(n.get('grad_in'))} | {_g(n.get('grad_out'))} | {zeroed} | {n.get('verdict')} |"
        )
    if len(nodes) > MAX_ROWS:
        lines.append(f"| … | {len(nodes) - MAX_ROWS} more rows in timeline.jsonl | | | | | |")
    lines.append("")
    return lines


def _g(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"

"""report.html: one self-contained page (CSS inline, plots as data: URIs, no script) that opens
from file:// with nothing fetched. Every user-controlled string goes through `_e` (html.escape).
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from .._version import __version__
from ..findings import Finding
from .curves import PREFIX as CURVES_PREFIX
from .curves import curve_groups, curves_html
from .gradpath import MAX_ROWS
from .model import Report
from .plots import Plots
from .text import fmt_value, outcome_text, summary_line

# Nothing may be fetched: a stray external reference fails loudly (and the browser test sees it).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'"
MAX_PARAMS = 20

CSS = """
:root { --fg:#1d2127; --muted:#5f6873; --line:#dde1e6; --bg:#f6f7f9; --card:#fff;
  --error:#c62828; --warning:#a35c00; --info:#1565c0; --ok:#2e7d32; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font:15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", sans-serif; }
main { max-width:1040px; margin:0 auto; padding:24px 20px 48px; }
h1 { font-size:24px; margin:0 0 4px; } h2 { font-size:19px; margin:36px 0 12px; }
h3 { font-size:16px; margin:6px 0 10px; }
code, pre { font:13px/1.45 ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; }
code { background:#eef0f3; padding:1px 4px; border-radius:3px; overflow-wrap:anywhere; }
pre { background:#f1f3f5; padding:10px 12px; border-radius:6px; overflow-x:auto; }
pre code { background:none; padding:0; }
a { color:#1557b0; }
.muted { color:var(--muted); }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:16px 18px; margin:0 0 14px; }
.badge { display:inline-block; font-size:12px; font-weight:600; letter-spacing:.03em;
  text-transform:uppercase; color:#fff; border-radius:4px; padding:1px 8px; }
.badge.error, .badge.failing { background:var(--error); }
.badge.warning { background:var(--warning); }
.badge.info { background:var(--info); }
.badge.healthy { background:var(--ok); }
.finding { border-left:5px solid var(--line); }
.finding.error { border-left-color:var(--error); }
.finding.warning { border-left-color:var(--warning); }
.finding.info { border-left-color:var(--info); }
.finding .head { display:flex; gap:10px; align-items:baseline; flex-wrap:wrap; }
.finding .code { font-weight:700; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; vertical-align:top; padding:5px 8px; border-bottom:1px solid var(--line); }
table.kv > tbody > tr > th { width:96px; color:var(--muted); font-weight:600; }
table.evidence { width:auto; }
table.evidence td, table.evidence th { padding:2px 16px 2px 0; border:none; font-size:14px; }
table.evidence th { color:var(--fg); font-weight:500; width:auto; white-space:nowrap; }
table.evidence th code { overflow-wrap:normal; }
table.list th { background:#f1f3f5; font-size:13px; }
table.list td { font-size:14px; }
dl.meta { display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; margin:12px 0 0; }
dl.meta dt { color:var(--muted); } dl.meta dd { margin:0; }
figure { margin:0 0 14px; background:var(--card); border:1px solid var(--line);
  border-radius:8px; padding:10px; }
figure img { display:block; max-width:100%; height:auto; margin:0 auto; }
figcaption { color:var(--muted); font-size:13px; margin-top:6px; }
figcaption b { color:var(--fg); }
figure.curves { display:inline-block; margin:0 8px 6px 0; padding:6px; }
figure.curves svg { display:block; max-width:100%; height:auto; }
tr.blocks td { background:#fdecea; } tr.partial td { background:#fff6e0; }
.docs h4 { margin:14px 0 4px; font-size:14px; }
details.card > summary { cursor:pointer; font-weight:600; }
footer { margin-top:36px; font-size:13px; color:var(--muted); }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_html(report: Report, plots: Plots | None = None) -> str:
    """The whole page; `plots` are the images drawn for this render (None: no plot section)."""
    body = [
        _header(report),
        _findings(report),
        _plots(plots) if plots is not None else "",
        _gradient_path(report),
        _internal_errors(report),
        _rule_docs(report.findings),
        f"<footer>traindoctor {_e(__version__)} · findings.json, report.md and timeline.jsonl "
        "are beside this file · <code>traindoctor report DIR</code> re-renders it</footer>",
    ]
    title = f"traindoctor · {report.shown_status} · {_run_id(report)}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style></head>\n"
        "<body><main>\n" + "\n".join(b for b in body if b) + "\n</main></body></html>\n"
    )


# -- sections ------------------------------------------------------------------------------


def _badge(report: Report) -> str:
    """The headline badge's colour class: a run not diagnosed is shown neutral, not green."""
    return report.status if report.shown_status == report.status else "info"


def _run_id(report: Report) -> str:
    facts = report.timeline.facts if report.timeline is not None else {}
    if facts.get("run_id"):
        return str(facts["run_id"])
    return report.run_dir.name if report.run_dir is not None else "run"


def _header(report: Report) -> str:
    facts = report.timeline.facts if report.timeline is not None else {}
    outcome = outcome_text(report) or "completed normally"
    if not (report.outcome or {}).get("ended") and report.timeline is None:
        outcome = "unknown (findings.json records no outcome)"
    rows = [
        ("run", _run_id(report)),
        ("script", facts.get("script") or "— (watched from Python with td.watch)"),
        ("steps", f"{report.steps} optimizer step{'s' if report.steps != 1 else ''}"),
        ("ended", outcome),
        ("framework", f"{report.framework} · mode {facts.get('mode') or '—'}"),
        ("models", ", ".join(f"{k} ({v})" for k, v in (facts.get("models") or {}).items()) or "—"),
        ("overhead", _overhead(facts.get("overhead"))),
    ]
    if report.ranks is not None:
        from .text import rank_ended_text

        # A job's merged report has no timeline of its own (no script line to show): its ranks
        # and how each ended instead.
        ended = "; ".join(rank_ended_text(e) for e in report.ranks)
        rows[1] = ("ranks", f"world size {report.world_size}: {ended}")
        rows = [r for r in rows if r[0] not in ("models", "overhead")]  # in each rank's page
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return (
        '<header id="summary" class="card">'
        f'<h1>traindoctor report <span class="badge {_e(_badge(report))}">'
        f"{_e(report.shown_status)}"
        f"</span></h1>"
        f'<div class="muted">{_e(summary_line(report, with_path=False))}</div>'
        f'<dl class="meta">{meta}</dl></header>'
    )


def _overhead(overhead: dict[str, Any] | None) -> str:
    if not overhead:
        return "—"
    text = f"{fmt_value(float(overhead.get('seconds_in_traindoctor') or 0))} s inside traindoctor"
    if overhead.get("summary"):
        # The side-by-side ratio measured from step times, and the cost model's prediction.
        text = f"{overhead['summary']}; {text}"
    windows = [w for w in overhead.get("windows") or [] if len(w) >= 2]
    if windows:
        shares = sorted(float(w[1]) for w in windows)
        median = shares[len(shares) // 2]
        text += (
            f"; measured share of step time {median:.1%} (median of {len(windows)} "
            f"governor decision{'s' if len(windows) != 1 else ''})"
        )
    if overhead.get("floor_share") is not None:
        text += f"; every step's own cost {float(overhead['floor_share']):.1%}"
    if overhead.get("final_sample_interval"):
        text += f"; sampling every {overhead['final_sample_interval']} steps at the end"
    return text


def _findings(report: Report) -> str:
    if not report.findings:
        return (
            '<section id="findings"><h2>Findings</h2>'
            '<p class="card">No problems found.</p></section>'
        )
    rows = "".join(
        f'<tr><td><span class="badge {_e(f.severity.value)}">{_e(f.severity.value)}</span></td>'
        f'<td><a href="#finding-{i}"><code>{_e(f.code)}</code></a> {_e(f.name)}</td>'
        f"<td>{_e(f.step if f.step is not None else '—')}</td>"
        f"<td>{_e(f.where.source or f.where.module or '—')}</td></tr>"
        for i, f in enumerate(report.findings, 1)
    )
    index = (
        '<table class="list card"><thead><tr><th>severity</th><th>rule</th><th>step</th>'
        f"<th>where</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    cards = "\n".join(_finding(i, f) for i, f in enumerate(report.findings, 1))
    return f'<section id="findings"><h2>Findings</h2>{index}\n{cards}</section>'


def _finding(i: int, f: Finding) -> str:
    seen = f"step {f.step}" if f.step is not None else "—"
    if f.last_step is not None and f.step is not None and f.last_step > f.step:
        seen += f", last at step {f.last_step}"
    if f.count > 1:
        seen += f" (seen {f.count}×)"
    rows = [
        ("where", _where(f)),
        ("evidence", _evidence(f)),
        *([("curves", curves_html(f))] if curve_groups(f) else []),
        ("cause", _inline(f.cause) if f.cause else "—"),
        ("fix", _inline(f.fix) if f.fix else "—"),
        ("first seen", _e(seen)),
        *([("ranks", _e(", ".join(map(str, f.ranks))))] if f.ranks else []),
        (
            "docs",
            f'<a href="#rule-{_e(f.code)}">{_e(f.code)} {_e(f.name)}</a> · '
            f"<code>{_e(f.docs)}</code>",
        ),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    sev = _e(f.severity.value)
    return (
        f'<article class="card finding {sev}" id="finding-{i}">'
        f'<div class="head"><span class="badge {sev}">{sev}</span>'
        f'<span class="code">{_e(f.code)}</span><span class="muted">{_e(f.name)}</span></div>'
        f"<h3>{_inline(f.title)}</h3>"
        f'<table class="kv"><tbody>{table}</tbody></table></article>'
    )


def _where(f: Finding) -> str:
    w = f.where
    parts = []
    if w.module:
        parts.append(f"module <code>{_e(w.module)}</code>")
    if w.params:
        shown = ", ".join(f"<code>{_e(p)}</code>" for p in w.params[:MAX_PARAMS])
        if len(w.params) > MAX_PARAMS:
            shown += f", … ({len(w.params)} in all)"
        parts.append(f"params {shown}")
    if w.op:
        parts.append(f"op <code>{_e(w.op)}</code>")
    if w.source:
        parts.append(f"source <code>{_e(w.source)}</code>")
    return " · ".join(parts) or "—"


def _evidence(f: Finding) -> str:
    if not f.evidence:
        return "—"
    if f.code == "TD502":
        audit = _audit(f)
        if audit:
            return audit
    rows = "".join(
        f"<tr><th><code>{_e(k)}</code></th><td>{_e(fmt_value(v))}</td></tr>"
        for k, v in f.evidence.items()
        if not (k == "curves" and curve_groups(f))  # drawn in the row below, in full
    )
    return f'<table class="evidence"><tbody>{rows}</tbody></table>'


def _audit(f: Finding) -> str:
    """TD502's evidence as the per-component table the markdown report shows."""
    from .audit import AUDIT_HEADER, audit_table

    table = audit_table([f])
    if table is None:
        return ""
    step, cells, notes = table
    head = "".join(f"<th>{_e(h)}</th>" for h in AUDIT_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in cells)
    extra = "".join(f"<p>{_e(n)}</p>" for n in notes)
    return (
        f'<p class="muted">as of step {_e(step)}: values (tensors)</p>'
        f'<table class="evidence"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        f"{extra}"
    )


def _plots(plots: Plots) -> str:
    figures = []
    for im in plots.images:
        if im.name.startswith(CURVES_PREFIX):  # drawn inline at their finding (curves.py)
            continue
        width, height = im.size
        data = base64.b64encode(im.png).decode("ascii")
        figures.append(
            f'<figure id="plot-{_e(im.name)}"><img src="data:image/png;base64,{data}" '
            f'alt="{_e(im.title)}" width="{width}" height="{height}">'
            f"<figcaption><b>{_e(im.title)}.</b> {_inline(im.caption)} "
            f'<span class="muted">(plots/{_e(im.name)}.png)</span></figcaption></figure>'
        )
    missing = ""
    if plots.skipped:
        items = "".join(
            f'<li id="plot-missing-{_e(s.name)}"><b>{_e(s.title)}</b>: {_e(s.reason)}</li>'
            for s in plots.skipped
        )
        missing = f'<div class="card"><p>Not available in this run:</p><ul>{items}</ul></div>'
    return f'<section id="plots"><h2>Plots</h2>{"".join(figures)}{missing}</section>'


def _gradient_path(report: Report) -> str:
    if report.timeline is None:
        return ""
    walks = report.timeline.events("gradient_path")
    walks = [e for e in walks if e.get("lines_known")] or walks
    if not walks:
        return ""
    e = walks[-1]
    nodes = e.get("nodes") or []
    rows = []
    for n in nodes[:MAX_ROWS]:
        verdict = str(n.get("verdict") or "")
        cls = "blocks" if verdict == "blocks" else "" if verdict in ("passes", "") else "partial"
        zeroed = "—" if n.get("zeroed") is None else f"{n['zeroed']:.1%}"
        rows.append(
            f'<tr class="{cls}"><td>{_e(n.get("index"))}</td><td><code>{_e(n.get("op"))}</code>'
            f"</td><td>{_e(n.get('source') or '—')}</td><td>{_g(n.get('grad_in'))}</td>"
            f"<td>{_g(n.get('grad_out'))}</td><td>{zeroed}</td><td>{_e(verdict)}</td></tr>"
        )
    more = (
        f'<p class="muted">{len(nodes) - MAX_ROWS} more rows in timeline.jsonl.</p>'
        if len(nodes) > MAX_ROWS
        else ""
    )
    intro = (
        f"Backward of step {_e(e.get('step'))}, walked node by node "
        f"({_e(e.get('nodes_walked', 0))} autograd nodes, "
        f"{_e(e.get('nodes_measured', e.get('nodes_walked', 0)))} measured, "
        f"{1000 * float(e.get('seconds') or 0):.1f} ms). Rows: ops created by the loss code and "
        "ops that zero gradient."
    )
    return (
        f'<section id="gradient-path"><h2>Gradient path</h2><p>{intro}</p>'
        '<table class="list card"><thead><tr><th>#</th><th>op</th><th>source</th>'
        "<th>grad in</th><th>grad out</th><th>zeroed</th><th>verdict</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{more}</section>"
    )


def _g(v: Any) -> str:
    try:
        return "—" if v is None else _e(f"{float(v):.3g}")
    except (TypeError, ValueError):
        return _e(v)


def _internal_errors(report: Report) -> str:
    skipped = (report.outcome or {}).get("skipped_rules") or []
    parts = []
    if report.internal_errors:
        rows = "".join(
            f"<tr><td>{_e(err.get('where'))}</td><td>{_e(err.get('step', '—'))}</td>"
            f"<td><code>{_e(err.get('error'))}</code></td></tr>"
            for err in report.internal_errors
        )
        parts.append(
            "<p>Caught inside traindoctor; the training was not affected.</p>"
            '<table class="list card"><thead><tr><th>where</th><th>step</th><th>error</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    if skipped:
        codes = ", ".join(_e(s.get("code")) for s in skipped)
        parts.append(f"<p>Rules not judged (a probe they read from failed): {codes}</p>")
    if not parts:
        parts.append('<p class="muted">None: every probe, rule and renderer ran.</p>')
    return f'<section id="internal-errors"><h2>Internal errors</h2>{"".join(parts)}</section>'


def _rule_docs(findings: list[Finding]) -> str:
    """`traindoctor explain CODE` for each code reported, so the docs links work offline."""
    from ..rules import get_rule

    blocks = []
    for code in dict.fromkeys(f.code for f in findings):
        rule = get_rule(code)
        if rule is None:  # a plugin rule not installed where the report is re-rendered
            continue
        blocks.append(
            f'<details class="card"><summary>{_e(code)} {_e(rule.name)}</summary>'
            f'<div class="docs" id="rule-{_e(code)}">{_markdown(rule.explain())}</div></details>'
        )
    if not blocks:
        return ""
    return f'<section id="rule-docs"><h2>Rule documentation</h2>{"".join(blocks)}</section>'


def _markdown(text: str) -> str:
    """The small subset of Markdown the rule docstrings use: headings, fenced code, bullet
    lists, paragraphs and `inline code`. Escaped first, so a docstring cannot inject markup."""
    out: list[str] = []
    para: list[str] = []
    code: list[str] | None = None
    items: list[str] = []

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        if code is not None:
            if line.startswith("```"):
                out.append(f"<pre><code>{_e(chr(10).join(code))}</code></pre>")
                code = None
            else:
                code.append(line)
        elif line.startswith("```"):
            flush()
            code = []
        elif line.startswith("#"):
            flush()
            if not line.startswith("# "):  # the page already names the rule (h1 of explain)
                out.append(f"<h4>{_inline(line.lstrip('#').strip())}</h4>")
        elif line.startswith("- "):
            if para:
                flush()
            items.append(line[2:])
        elif not line.strip():
            flush()
        elif items:
            items[-1] += " " + line.strip()
        else:
            para.append(line.strip())
    if code is not None:
        out.append(f"<pre><code>{_e(chr(10).join(code))}</code></pre>")
    flush()
    return "".join(out)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))

"""Jupyter: a Report shown inline (report.html's content, scoped to its output cell), and the
live status of a watched run in the cell that trains.

Only under an IPython kernel (a `ZMQInteractiveShell`: Jupyter, VS Code, Colab). IPython is
never imported here, only looked up in `sys.modules`: plain Python and terminal IPython are
unchanged. At close the report replaces the console summary in the cell that closed the run;
the run is never closed for the user (a loop in one cell and `doc.report` in the next work).
"""

from __future__ import annotations

import html
import re
import sys
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from ..bus import Event
from ..findings import Finding, Severity
from . import model

# Seconds between two redraws of the live status, at most: a step pays one clock read.
INTERVAL = 0.5
MAX_LISTED = 3  # findings named in the live status; the rest are counted
_COLOR = {Severity.ERROR: "#c62828", Severity.WARNING: "#a35c00", Severity.INFO: "#1565c0"}
_OK = "#2e7d32"
_STATUS_STYLE = (
    "font:13px/1.5 ui-monospace,'DejaVu Sans Mono',monospace;padding:4px 10px;"
    "background:#f6f7f9;color:#1d2127;border-left:4px solid {color};border-radius:3px"
)


def kernel_shell() -> Any | None:
    """The running IPython kernel's shell, or None (plain Python, terminal IPython)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    if shell is None:
        return None
    if not any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__):
        return None
    return shell


def _cell(shell: Any) -> str | None:
    """The execute request being run: outputs displayed now go to its cell."""
    header = getattr(shell, "parent_header", None) or {}
    msg_id = header.get("msg_id") if isinstance(header, dict) else None
    return msg_id or f"count {getattr(shell, 'execution_count', '')}"


def _display(bundle: dict[str, str], **kwargs: Any) -> Any:
    from IPython.display import display  # IPython is imported: kernel_shell() said so

    return display(bundle, raw=True, **kwargs)


# -- the report ------------------------------------------------------------------------------


def report_html(report: model.Report, page: str | None = None) -> str:
    """report.html's body as one self-contained fragment: its CSS scoped to the fragment (a
    notebook page has its own styles), ids made unique (several reports in one notebook),
    plots as data: URIs, no <head>, no file links. `page`: report.html as just written.
    A renderer that fails shows the text report and the error, not a formatter traceback."""
    try:
        return _fragment(report, page)
    except Exception as err:  # noqa: BLE001  (the findings must still be shown)
        from .console import render_text

        return (
            f"<pre>{_e(render_text(report))}</pre><p>traindoctor could not render the HTML "
            f"report here: {_e(type(err).__name__)}: {_e(err)}</p>"
        )


def _fragment(report: model.Report, page: str | None) -> str:
    from .html import CSS, render_html
    from .plots import render_plots

    if page is None:
        page = render_html(report, render_plots(report.timeline))
    body = page.split("<body><main>\n", 1)[1].rsplit("\n</main></body>", 1)[0]
    body = re.sub(r"<footer>.*?</footer>", lambda _: _footer(report), body, flags=re.S)
    scope = f"td-report-{uuid.uuid4().hex[:10]}"
    # Escaped text never holds a raw quote, so these only match the page's own attributes.
    body = re.sub(r'\bid="([^"]*)"', rf'id="{scope}-\1"', body)
    body = re.sub(r'\bhref="#([^"]*)"', rf'href="#{scope}-\1"', body)
    return (
        f'<div id="{scope}" class="traindoctor-report"><style>{scope_css(CSS, "#" + scope)}'
        f"</style><main>{body}</main></div>"
    )


def scope_css(css: str, scope: str) -> str:
    """Every rule of `css` applied inside `scope` only (`:root` and `body` become the scope).
    The page's CSS is flat rules; an at-rule would be silently mangled, so it is refused."""
    if "@" in css:
        raise ValueError("scope_css handles flat rules only, not at-rules")
    out = []
    for selectors, block in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        scoped = []
        for sel in (s.strip() for s in selectors.split(",")):
            scoped.append(scope if sel in (":root", "body") else f"{scope} {sel}")
        out.append(f"{', '.join(scoped)} {{{block}}}")
    return "\n".join(out)


def _footer(report: model.Report) -> str:
    from .._version import __version__
    from .text import not_judged_text

    notes = [f"traindoctor {__version__}"]
    if report.run_dir is not None:
        notes.append(
            f"run directory <code>{_e(report.run_dir)}</code> (report.html, findings.json, "
            "report.md, timeline.jsonl)"
        )
    # The console summary is not printed in a notebook: what only it said goes here.
    for note in (not_judged_text(report), report.write_error):
        if note:
            notes.append(_e(note))
    return f"<footer>{' · '.join(notes)}</footer>"


def report_markdown(report: model.Report) -> str:
    """The short form: status, steps and one line per finding."""
    lines = [f"**traindoctor** · {_md(_summary(report))}", ""]
    for f in report.findings:
        at = f", step {f.step}" if f.step is not None else ""
        lines.append(f"- `{f.code}` {_md(f.name)} ({f.severity.value}{at}): {_md(f.title)}")
    if report.run_dir is not None:
        lines += ["", f"report: `{report.run_dir}/report.html`"]
    return "\n".join(lines) + "\n"


def _summary(report: model.Report) -> str:
    from .text import summary_line

    return f"{report.shown_status} · {summary_line(report, with_path=False)}"


def display_report(report: model.Report) -> None:
    """`Report._ipython_display_`: the HTML report, the short Markdown and the repr, unless the
    run's close already showed this report in this very cell (`doc.close()` as a cell's last
    line would show it twice)."""
    shell = kernel_shell()
    if shell is None:  # terminal IPython: text only, and no plots drawn for nothing
        _display({"text/plain": repr(report)})
        return
    if _shown.get(id(report)) == (weakref.ref(report), _cell(shell)):
        return
    _display(_bundle(report))


def _bundle(report: model.Report, page: str | None = None) -> dict[str, str]:
    return {
        "text/plain": repr(report),
        "text/markdown": report_markdown(report),
        "text/html": report_html(report, page),
    }


def _written_page(report: model.Report) -> str | None:
    """report.html as publish() wrote it a moment ago: its plots are not drawn twice."""
    if report.run_dir is None or report.write_error is not None:
        return None
    if any(str(e.get("where", "")) == "report html" for e in report.internal_errors):
        return None  # not written this time: a page there would be an older run's
    path = Path(report.run_dir) / "report.html"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


# id(report) -> (ref, cell): the report shown by its run's close, and where.
_shown: dict[int, tuple[weakref.ref, str | None]] = {}


def show_at_close(report: model.Report) -> bool:
    """publish()'s hook, instead of the console summary: in a notebook, the live status says the
    run is over and the report is shown in the cell that closed it. False outside a kernel."""
    shell = kernel_shell()
    if shell is None:
        return False
    cell = _cell(shell)
    for live in list(_live):
        if live.timeline is report.timeline:
            live.finish(report, cell)
    _display(_bundle(report, _written_page(report)))
    _shown.clear()  # only the last one can be a cell's last line
    _shown[id(report)] = (weakref.ref(report), cell)
    return True


# -- the live status -------------------------------------------------------------------------


_live: weakref.WeakSet[LiveStatus] = weakref.WeakSet()


def watch_live(doc: Any) -> None:
    """Doctor.attach's hook: a live status line in the notebook cell, redrawn in place as
    steps close (at most every INTERVAL seconds) and when a diagnosis pass finds something.
    Nothing outside a kernel, with console=False, or in a rank of a distributed job."""
    if not doc.console or doc.dist is not None or kernel_shell() is None:
        return
    if any(live.timeline is doc.timeline for live in _live):
        return  # attached again (zero-code mode): one status per run
    live = LiveStatus(doc.state, doc.timeline)
    # The bus holds the listeners, and through them the status: it lives as long as the run.
    live.unsubscribe = [
        doc.bus.subscribe(Event.STEP_CLOSED, live.on_step, "notebook status"),
        doc.bus.subscribe(Event.DIAGNOSIS_MADE, live.on_diagnosis, "notebook status"),
    ]
    _live.add(live)
    live.draw()


class LiveStatus:
    """One line: the step and the findings so far, in a display redrawn in place."""

    def __init__(self, state: Any, timeline: Any) -> None:
        self.state = state
        self.timeline = timeline
        self.findings: list[Finding] = []
        self.unsubscribe: list[Any] = []
        self.handle: Any = None
        self.cell: str | None = None
        self.done = 0  # steps closed
        self.due = 0.0

    def on_step(self, step: int, sampled: bool, rec: Any) -> None:
        self.done = step
        if time.monotonic() >= self.due:
            self.draw()

    def on_diagnosis(self, findings: list[Finding]) -> None:
        changed = [f.code for f in findings] != [f.code for f in self.findings]
        self.findings = list(findings)
        if changed and not self.state.closed and time.monotonic() >= self.due:
            self.draw()

    def draw(self) -> None:
        self.due = time.monotonic() + INTERVAL
        head = f"step {self.done}" if self.done else "attached, no step yet"
        text, color = self._line(head, self.findings)
        shell = kernel_shell()
        cell = _cell(shell) if shell is not None else self.cell
        if self.handle is not None and cell != self.cell:
            # The loop goes on in another cell: the old line says so, a new one follows it here.
            self.handle.update(_status(f"{text} · continued in a later cell", color), raw=True)
            self.handle = None
        if self.handle is None:
            self.handle = _display(_status(text, color), display_id=True)
            self.cell = cell
        else:
            self.handle.update(_status(text, color), raw=True)

    def finish(self, report: model.Report, cell: str | None) -> None:
        for unsubscribe in self.unsubscribe:
            unsubscribe()
        _live.discard(self)
        steps = f"finished · {report.steps} step{'s' if report.steps != 1 else ''}"
        text, color = self._line(steps, report.findings, report.status)
        where = "report below" if cell == self.cell else "report in the cell that closed the run"
        if self.handle is not None:
            self.handle.update(_status(f"{text} · {where}", color), raw=True)

    @staticmethod
    def _line(head: str, findings: list[Finding], status: str | None = None) -> tuple[str, str]:
        """The status text and its colour; `status` (the report's) once the run is over."""
        bits = [f"traindoctor · {head}"] + ([status] if status else [])
        if not findings:
            bits.append("no findings" + ("" if status else " so far"))
            return " · ".join(bits), _OK
        counts = ", ".join(
            f"{n} {sev.value}{'s' if n != 1 and sev is not Severity.INFO else ''}"
            for sev in Severity
            if (n := sum(f.severity is sev for f in findings))
        )
        named = ", ".join(f"{f.code} {f.name}" for f in findings[:MAX_LISTED])
        more = f" +{len(findings) - MAX_LISTED} more" if len(findings) > MAX_LISTED else ""
        bits.append(f"{counts}{'' if status else ' so far'}: {named}{more}")
        worst = min(f.severity.rank for f in findings)
        color = _OK if status == "healthy" else _COLOR[list(Severity)[worst]]
        return " · ".join(bits), color


def _status(text: str, color: str) -> dict[str, str]:
    return {
        "text/plain": text,
        "text/html": f'<div class="traindoctor-status" style="{_STATUS_STYLE.format(color=color)}">'
        f"{_e(text)}</div>",
    }


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _md(text: str) -> str:
    """Markdown's inline syntax escaped outside `code` spans (which titles use as such): a
    title shows as written."""
    parts = re.split(r"(`[^`]+`)", str(text))
    return "".join(
        p if i % 2 else re.sub(r"([\\*_\[\]<>#|])", r"\\\1", p) for i, p in enumerate(parts)
    )


model.NOTEBOOK_VIEWS.update(html=report_html, markdown=report_markdown, display=display_report)

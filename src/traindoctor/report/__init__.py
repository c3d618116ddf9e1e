"""Renderers: findings.json, report.md, report.html, plots/*.png, timeline.jsonl and the console
summary."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .._guard import Guard
from . import notebook  # registers how Jupyter shows a Report (model.NOTEBOOK_VIEWS)
from .markdown import render_markdown
from .model import Report

PLOTS_DIR = "plots"
# Internal errors recorded by the HTML report and its plots: a re-render judges them anew.
VISUAL_WHERE = ("report plot ", "report html")


def atomic_write(path: Path, lines: Iterable[str]) -> None:
    """Write through a temp file and rename, so a crash never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def publish(report: Report, guard: Guard, console: bool) -> None:
    """Write the run directory and print the console summary. A failure is recorded in the
    report (`write_error`, and `guard` for a renderer bug), never raised into the user's loop."""
    try:
        write_run(report)
    except OSError as err:
        report.write_error = f"could not write the run directory: {err}"
    except Exception as err:  # noqa: BLE001  (a renderer bug must not reach the user's loop)
        guard.record("report writer", err)
        report.internal_errors = [e.to_dict() for e in guard.errors]
        report.write_error = f"could not render the report: {type(err).__name__}: {err}"
    if console:
        from .console import print_report

        shown = False
        with contextlib.suppress(Exception):
            # In a notebook the inline report stands for the console summary.
            shown = notebook.show_at_close(report)
        if not shown:
            with contextlib.suppress(Exception):
                print_report(report)


def write_run(report: Report) -> None:
    assert report.run_dir is not None
    run_dir = Path(report.run_dir)
    _write_text_reports(report)
    timeline = report.timeline
    if timeline is not None:
        path = run_dir / "timeline.jsonl"
        stream = timeline.stream
        if stream is not None:
            stream.finish()  # streamed as the run went: completed, not written again
        if stream is None or not stream.finished or stream.path != Path(os.path.abspath(path)):
            # Not streamed, the stream failed, or the report goes elsewhere (a td.watch script
            # that changed directory since: the report goes where close() runs, as before).
            atomic_write(path, (line + "\n" for line in timeline.to_jsonl_lines()))
    write_visual(report)


def rerender_run(report: Report) -> None:
    """Re-render report.md, report.html and plots/ from a loaded report (findings.json is left
    as it is unless drawing the plots or the page fails, which it then records)."""
    assert report.run_dir is not None
    atomic_write(Path(report.run_dir) / "report.md", [render_markdown(report)])
    write_visual(report)


def _write_text_reports(report: Report) -> None:
    run_dir = Path(report.run_dir)  # type: ignore[arg-type]
    atomic_write(run_dir / "findings.json", [json.dumps(report.to_dict(), indent=2) + "\n"])
    atomic_write(run_dir / "report.md", [render_markdown(report)])


def write_visual(report: Report) -> None:
    """plots/*.png and report.html, after the text reports are safely on disk.

    Neither may cost the rest of the report: a plot or a page that fails to render becomes an
    internal error (the other plots and files are still written), and findings.json and
    report.md are written again so that they say so. OSError (disk full, permissions)
    propagates like any other write failure of the run directory.
    """
    from .html import render_html
    from .plots import render_plots

    run_dir = Path(report.run_dir)  # type: ignore[arg-type]
    before = list(report.internal_errors)
    report.internal_errors = [
        e for e in report.internal_errors if not str(e.get("where", "")).startswith(VISUAL_WHERE)
    ]
    plots = render_plots(report.timeline, report.findings)  # with the findings' loss curves
    for name, err in plots.errors:
        report.internal_errors.append(_error(f"report plot {name}", err))
    plots_dir = run_dir / PLOTS_DIR
    for im in plots.images:
        atomic_write_bytes(plots_dir / f"{im.name}.png", im.png)
    for skipped in plots.skipped:
        # A re-render must not leave a plot drawn earlier beside a page that says it is missing.
        with contextlib.suppress(OSError):
            (plots_dir / f"{skipped.name}.png").unlink()
    try:
        page = render_html(report, plots)
    except Exception as err:  # noqa: BLE001  (the page is optional; the findings are not)
        report.internal_errors.append(_error("report html", err))
        page = None
    if page is not None:
        atomic_write(run_dir / "report.html", [page])
    if report.internal_errors != before:
        _write_text_reports(report)


def _error(where: str, err: BaseException) -> dict:
    return {"where": where, "error": f"{type(err).__name__}: {err}", "step": None}


def load_run(run_dir: Path) -> Report:
    path = Path(run_dir) / "findings.json"
    if not path.is_file():
        from ..errors import UsageError

        raise UsageError(
            f"{run_dir} has no findings.json; pass a run directory such as "
            "traindoctor-runs/<run-id>/ written by `traindoctor run` or doc.close()"
        )
    with open(path, encoding="utf-8") as fh:
        report = Report.from_dict(json.load(fh), run_dir=Path(run_dir))
    timeline = Path(run_dir) / "timeline.jsonl"
    if timeline.is_file():
        from ..timeline import Timeline

        with contextlib.suppress(ValueError, OSError):
            report.timeline = Timeline.from_jsonl(timeline)
    return report


__all__ = [
    "Report",
    "write_run",
    "load_run",
    "rerender_run",
    "atomic_write",
    "atomic_write_bytes",
    "render_markdown",
    "write_visual",
]

"""Renderers: findings.json, report.md, timeline.jsonl and the console summary."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .markdown import render_markdown
from .model import Report


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


def write_run(report: Report) -> None:
    assert report.run_dir is not None
    run_dir = Path(report.run_dir)
    atomic_write(run_dir / "findings.json", [json.dumps(report.to_dict(), indent=2) + "\n"])
    atomic_write(run_dir / "report.md", [render_markdown(report)])
    if report.timeline is not None:
        atomic_write(
            run_dir / "timeline.jsonl", (line + "\n" for line in report.timeline.to_jsonl_lines())
        )


def rewrite_markdown(report: Report) -> None:
    """Re-render report.md from a loaded report (findings.json is left as it is)."""
    assert report.run_dir is not None
    atomic_write(Path(report.run_dir) / "report.md", [render_markdown(report)])


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
    "rewrite_markdown",
    "atomic_write",
    "render_markdown",
]

"""Report: the findings of one run plus what is needed to render and re-render it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..findings import Finding, Severity, status_of
from ..timeline import Timeline

SCHEMA_VERSION = 1
# How Jupyter shows a Report (html, markdown, display), filled by report/notebook.py when the
# report package is imported: every renderer imports Report, so this module imports none.
NOTEBOOK_VIEWS: dict[str, Callable[[Report], Any]] = {}


@dataclass
class Report:
    findings: list[Finding]
    steps: int
    framework: str = "plain"
    outcome: dict[str, Any] = field(default_factory=dict)
    internal_errors: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    timeline: Timeline | None = None
    write_error: str | None = None
    # A distributed job (traindoctor.distributed): a rank's own report names its `rank` and
    # the `world_size`; the job's merged report has the `world_size` and one entry per rank
    # (status closed/killed/running/missing, steps, exit). None in a single process's report.
    rank: int | None = None
    world_size: int | None = None
    ranks: list[dict[str, Any]] | None = None

    @property
    def status(self) -> str:
        return status_of(self.findings)

    @property
    def shown_status(self) -> str:
        """The status as the reports' headlines show it: a run that ended before its first
        training step was not judged, so it is not called healthy (findings.json keeps
        `status`, whose values are the schema's)."""
        if not self.findings and self.steps == 0:
            return "not diagnosed"
        return self.status

    @property
    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    def get(self, code: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict[str, Any]:
        """findings.json, schema 1 (DESIGN.md), with `run` and `internal_errors` added (and,
        in a distributed job, `rank` or `ranks`, and `world_size`)."""
        data = {
            "schema": SCHEMA_VERSION,
            "tool": "traindoctor",
            "version": __version__,
            "status": self.status,
            "steps": self.steps,
            "framework": self.framework,
            "findings": [f.to_dict() for f in self.findings],
            "run": self.outcome,
            "internal_errors": self.internal_errors,
        }
        if self.rank is not None:
            data["rank"] = self.rank
        if self.world_size is not None:
            data["world_size"] = self.world_size
        if self.ranks is not None:
            data["ranks"] = self.ranks
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], run_dir: Path | None = None) -> Report:
        if data.get("schema") != SCHEMA_VERSION or data.get("tool") != "traindoctor":
            raise ValueError("not a traindoctor findings.json (schema 1)")
        return cls(
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            steps=int(data.get("steps", 0)),
            framework=data.get("framework", "plain"),
            outcome=data.get("run") or {},
            internal_errors=data.get("internal_errors") or [],
            run_dir=run_dir,
            rank=data.get("rank"),
            world_size=data.get("world_size"),
            ranks=data.get("ranks"),
        )

    def __str__(self) -> str:
        from .console import render_text

        return render_text(self)

    def __repr__(self) -> str:
        codes = f" ({', '.join(self.codes)})" if self.findings else ""
        where = f" · {self.run_dir}" if self.run_dir is not None else ""
        n = len(self.findings)
        return (
            f"<traindoctor Report {self.status} · {n} finding{'s' if n != 1 else ''}{codes} "
            f"in {self.steps} step{'s' if self.steps != 1 else ''}{where}>"
        )

    # Jupyter (report/notebook.py): inline, the content of report.html.
    def _repr_html_(self) -> str | None:
        return NOTEBOOK_VIEWS["html"](self)

    def _repr_markdown_(self) -> str | None:
        return NOTEBOOK_VIEWS["markdown"](self)

    def _ipython_display_(self) -> None:
        NOTEBOOK_VIEWS["display"](self)

"""The exporter: a bus listener that posts to the experiment trackers the script has active.

At each diagnosis pass (`diagnosis made`) it finds the active trackers (finders.py: W&B run,
TensorBoard writers, MLflow run) and hands each the findings it has not posted yet and the
measured values since the last it posted; at close (`report written`) the same plus the
report. Every tracker call is behind the guard (`tracker <name>`): an error is an internal
error of the run, and that tracker is left alone for the rest of it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ..._validate import TRACKERS
from ...bus import Event
from ...findings import Finding
from .base import Finder, Handle
from .measurements import Measurements
from .mlflow_tracker import MlflowFinder
from .tensorboard_tracker import TensorBoardFinder
from .wandb_tracker import WandbFinder

if TYPE_CHECKING:
    from ...probes.base import RunContext
    from ...report.model import Report
    from ...timeline import Timeline

FINDERS: dict[str, type[Finder]] = {
    "wandb": WandbFinder,
    "tensorboard": TensorBoardFinder,
    "mlflow": MlflowFinder,
}


class Exporter:
    """Posts a run's findings, status and measured values to its trackers."""

    def __init__(self, run: RunContext, timeline: Timeline, export: str | tuple[str, ...]) -> None:
        self._run = run
        self._guard = run.guard
        self.explicit = export != "auto"
        names = TRACKERS if export == "auto" else tuple(export)
        self.finders = [FINDERS[name](timeline) for name in names]
        self._measure = Measurements(timeline)
        self._timeline = timeline

    def on_diagnosis(self, findings: list[Finding]) -> None:
        if self._run.state.closed:
            return  # the pass of close(): posted with the report, once it is written
        self._post(findings, None)

    def on_report(self, report: Report) -> None:
        errors = len(self._guard.errors)
        self._post(report.findings, report)
        if self.explicit:
            self._warn_unseen()
        if len(self._guard.errors) > errors and report.rank is None:
            # A tracker failed after the report was written: the report says so too.
            from ...report import publish

            report.internal_errors = [e.to_dict() for e in self._guard.errors]
            publish(report, self._guard, console=False)

    def _post(self, findings: list[Finding], report: Report | None) -> None:
        closing = report is not None
        step = report.steps if report is not None else self._timeline.last_step
        for finder in self.finders:
            where = f"tracker {finder.name}"
            handles = self._guard.call(where, finder.active, closing) or []
            for handle in handles:
                self._guard.call(where, self._send, handle, findings, report, step)

    def _send(
        self, handle: Handle, findings: list[Finding], report: Report | None, step: int
    ) -> None:
        new = [f for f in findings if f.key() not in handle.posted]
        points = self._measure.since(handle.done, findings)
        if report is None:
            handle.live(new, findings, points, step)
        else:
            handle.close(new, report, points)
        handle.posted.update(f.key() for f in new)
        if points:
            handle.done = points[-1].step

    def _warn_unseen(self) -> None:
        missing = [f.label for f in self.finders if not f.seen()]
        if missing:
            warnings.warn(
                "traindoctor: export=... names trackers this process never had active: "
                + ", ".join(missing)
                + "; nothing was posted to them (start them before the run ends, or leave "
                "export='auto')",
                stacklevel=2,
            )


def install(run: RunContext, timeline: Timeline, export: Any) -> Exporter | None:
    """Subscribe an exporter to the run's bus, unless `export` is () (none)."""
    if not export:
        return None
    exporter = Exporter(run, timeline, export)
    run.bus.subscribe(Event.DIAGNOSIS_MADE, exporter.on_diagnosis, "trackers")
    run.bus.subscribe(Event.REPORT_WRITTEN, exporter.on_report, "trackers")
    return exporter

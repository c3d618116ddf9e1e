"""What every tracker handle does, and what it remembers between passes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...findings import Finding
from .measurements import Point

if TYPE_CHECKING:
    from ...report.model import Report
    from ...timeline import Timeline

FindingKey = tuple[str, Any, Any, Any]


class Handle:
    """One place findings are posted to (a W&B run, a SummaryWriter, an MLflow run). The
    exporter hands it, at each diagnosis pass, the findings it has not posted yet and the
    measured points after `done`; at close, the report too."""

    name = "tracker"

    def __init__(self) -> None:
        self.posted: set[FindingKey] = set()
        self.done = 0  # the last step whose measurements were posted

    def live(
        self, new: list[Finding], findings: list[Finding], points: list[Point], step: int
    ) -> None:
        """A diagnosis pass at `step`: `new` findings, all `findings` so far, new `points`."""
        raise NotImplementedError

    def close(self, new: list[Finding], report: Report, points: list[Point]) -> None:
        """The run's end: the report is written (report.run_dir holds its files)."""
        raise NotImplementedError


class Finder:
    """Finds the handles of one tracker that are active now (lazily: never imports the
    tracker's library; the process must have imported it already)."""

    name = "tracker"
    label = "tracker"  # how a message names it

    def __init__(self, timeline: Timeline) -> None:
        pass

    def active(self, closing: bool) -> list[Handle]:
        raise NotImplementedError

    def seen(self) -> bool:
        """Whether any handle was ever found in this run."""
        raise NotImplementedError

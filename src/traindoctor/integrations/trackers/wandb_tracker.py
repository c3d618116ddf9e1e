"""Weights & Biases: the active run (`wandb.run`, which Lightning's WandbLogger and the Hugging
Face Trainer's report_to="wandb" create too).

The run's step counter is the user's: every `log` here is `commit=False` (it joins the row the
user commits next, or the last one at `finish()`), with the custom x-axis `traindoctor/step`
(define_metric) for the measured values. So a pass posts one point per series, the last sampled
step's; W&B keeps a single value per key in a row. Errors are `alert`s (recorded locally in
offline mode), the counts and each finding go in the run's summary, the findings table at close.
"""

from __future__ import annotations

import sys
from typing import Any

from ...findings import Finding
from ...timeline import Timeline
from . import content
from .base import Finder, Handle
from .measurements import PREFIX, Point

STEP_KEY = f"{PREFIX}step"


class WandbRun(Handle):
    name = "wandb"

    def __init__(self, wandb: Any, run: Any) -> None:
        super().__init__()
        self._wandb = wandb
        self.run = run
        self._axis = False

    def live(
        self, new: list[Finding], findings: list[Finding], points: list[Point], step: int
    ) -> None:
        run = self.run
        self._log_points(points)
        level = getattr(getattr(self._wandb, "AlertLevel", None), "ERROR", "ERROR")
        for f in new:
            if content.is_error(f):
                run.alert(title=content.alert_title(f), text=content.alert_text(f), level=level)
        summary = {f"{PREFIX}{k}": v for k, v in content.counts(findings).items()}
        summary.update({f"{PREFIX}{f.code}": content.tag_value(f) for f in reversed(findings)})
        run.summary.update(summary)

    def close(self, new: list[Finding], report: Any, points: list[Point]) -> None:
        self.live(new, report.findings, points, report.steps)
        rows = content.table_rows(report.findings)
        table = self._wandb.Table(columns=list(content.TABLE_COLUMNS), data=rows)
        self.run.log({f"{PREFIX}findings": table}, commit=False)
        self.run.summary.update(
            {
                f"{PREFIX}status": report.status,
                f"{PREFIX}status_line": content.status_line(report.findings, report.steps),
            }
        )

    def _log_points(self, points: list[Point]) -> None:
        if not points:
            return
        if not self._axis:
            self.run.define_metric(STEP_KEY, hidden=True)
            self.run.define_metric(f"{PREFIX}*", step_metric=STEP_KEY)
            self._axis = True
        last = points[-1].step
        row: dict[str, Any] = {p.key: p.value for p in points if p.step == last}
        row[STEP_KEY] = last
        self.run.log(row, commit=False)


class WandbFinder(Finder):
    name = "wandb"
    label = "W&B run (wandb.init)"

    def __init__(self, timeline: Timeline) -> None:
        self._handle: WandbRun | None = None

    def active(self, closing: bool) -> list[Handle]:
        wandb = sys.modules.get("wandb")
        run = getattr(wandb, "run", None) if wandb is not None else None
        if run is None:
            return []
        if self._handle is None or self._handle.run is not run:
            self._handle = WandbRun(wandb, run)
        return [self._handle]

    def seen(self) -> bool:
        return self._handle is not None

"""MLflow: the active run (`mlflow.active_run()`, which the Hugging Face Trainer's
report_to="mlflow" starts too) and the run of a Lightning MLFlowLogger (which logs through a
client, with no active run).

Lightning's loggers are looked for among the live objects (gc.get_referrers, tens of
milliseconds on a large heap) in a run the Lightning callback watches only, at the 1st, 2nd,
4th, 8th... pass and at close. Each finding is a tag (`traindoctor.TD104` = "error: <title> (<where>)") with the counts so
far (`traindoctor.errors`, `traindoctor.warnings`), the measured values metrics at their own
steps, all in one `log_batch` request a pass. At close: `traindoctor.status` and the report's
files (report.md, report.html, findings.json) as artifacts under `traindoctor/`. A run that
ended before traindoctor's close (the Trainer's callback ends the run it started at train end)
is still written to by its id: MLflow takes data for a finished run.
"""

from __future__ import annotations

import gc
import re
import sys
import time
import weakref
from pathlib import Path
from typing import Any

from ...findings import Finding
from ...timeline import Timeline
from . import content
from .base import Finder, Handle
from .measurements import Point

TAG = "traindoctor."
# log_batch's limits (MLflow's REST API): metrics and tags per request.
MAX_METRICS, MAX_TAGS = 1000, 100
ARTIFACTS = ("report.md", "report.html", "findings.json")
LIGHTNING_LOGGERS = ("lightning.pytorch.loggers.mlflow", "pytorch_lightning.loggers.mlflow")
# Characters MLflow accepts in a metric or tag key.
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")


class MlflowRun(Handle):
    name = "mlflow"

    def __init__(self, mlflow: Any, tracking_uri: str, run_id: str) -> None:
        super().__init__()
        self._mlflow = mlflow
        self.key = (tracking_uri, run_id)
        self.run_id = run_id
        self._client = mlflow.tracking.MlflowClient(tracking_uri=tracking_uri)

    def live(
        self, new: list[Finding], findings: list[Finding], points: list[Point], step: int
    ) -> None:
        tags = self._finding_tags(new, findings)
        self._log(points, tags)

    def close(self, new: list[Finding], report: Any, points: list[Point]) -> None:
        tags = self._finding_tags(new, report.findings)
        tags[f"{TAG}status"] = report.status
        tags[f"{TAG}summary"] = content.status_line(report.findings, report.steps)
        self._log(points, tags)
        if report.run_dir is not None:
            for name in ARTIFACTS:
                path = Path(report.run_dir) / name
                if path.is_file():
                    self._client.log_artifact(self.run_id, str(path), artifact_path="traindoctor")

    @staticmethod
    def _finding_tags(new: list[Finding], findings: list[Finding]) -> dict[str, str]:
        tags = {f"{TAG}{k}": str(v) for k, v in content.counts(findings).items()}
        for f in reversed(new):  # the highest-ranked finding of a code names the tag
            tags[f"{TAG}{f.code}"] = content.tag_value(f)
        return tags

    def _log(self, points: list[Point], tags: dict[str, str]) -> None:
        entities = self._mlflow.entities
        stamp = int(time.time() * 1000)  # MLflow's own field: when it was posted, not judged
        metrics = [entities.Metric(_key(p.key), p.value, stamp, p.step) for p in points]
        tag_list = [entities.RunTag(_key(k), v) for k, v in tags.items()]
        while metrics or tag_list:
            batch_tags, tag_list = tag_list[:MAX_TAGS], tag_list[MAX_TAGS:]
            room = MAX_METRICS - len(batch_tags)
            batch_metrics, metrics = metrics[:room], metrics[room:]
            self._client.log_batch(self.run_id, metrics=batch_metrics, tags=batch_tags)


class MlflowFinder(Finder):
    name = "mlflow"
    label = "MLflow run (mlflow.start_run)"

    def __init__(self, timeline: Timeline) -> None:
        self._facts = timeline.facts
        self._handles: dict[tuple[str, str], MlflowRun] = {}
        self._calls = 0
        self._loggers: list[Any] = []

    def active(self, closing: bool) -> list[Handle]:
        mlflow = sys.modules.get("mlflow")
        if mlflow is None:
            return []
        found: list[MlflowRun] = []
        run = mlflow.active_run()
        if run is not None:
            found.append(self._handle(mlflow, mlflow.get_tracking_uri(), run.info.run_id))
        self._calls += 1
        lightning = self._facts.get("framework") == "lightning"
        if lightning and (closing or self._calls & (self._calls - 1) == 0):  # 1, 2, 4, 8, ...
            self._loggers = [weakref.ref(o) for o in _lightning_loggers()]
        for ref in self._loggers:
            logger = ref()
            uri, run_id = getattr(logger, "_tracking_uri", None), getattr(logger, "_run_id", None)
            if isinstance(run_id, str):
                found.append(self._handle(mlflow, uri or mlflow.get_tracking_uri(), run_id))
        if closing:
            # A run seen during training and ended since is still the run's place.
            found += [h for h in self._handles.values() if h not in found]
        return list({h.key: h for h in found}.values())

    def _handle(self, mlflow: Any, uri: str, run_id: str) -> MlflowRun:
        key = (uri, run_id)
        if key not in self._handles:
            self._handles[key] = MlflowRun(mlflow, uri, run_id)
        return self._handles[key]

    def seen(self) -> bool:
        return bool(self._handles)


def _lightning_loggers() -> list[Any]:
    classes = [
        cls
        for module in LIGHTNING_LOGGERS
        if isinstance(cls := getattr(sys.modules.get(module), "MLFlowLogger", None), type)
    ]
    if not classes:
        return []
    return [o for o in gc.get_referrers(*classes) if type(o) in classes]


def _key(key: str) -> str:
    return _BAD_KEY.sub("_", key)

"""The job timeline: the ranks' timelines folded side by side, for the cross-rank rules.

Each rank records its own values in its own timeline (RUN_DIR/ranks/rank<N>/timeline.jsonl):
the ranks probe's DDP fingerprints, the data probe's batch fingerprints, the losses, what was
non-finite. At the merge (after the job: nothing here runs while a rank trains), those few
signals are read back from every rank's file and put into one timeline whose signals hold a
value per rank (`job.param_fp`: {step: {"0": rank 0's fingerprints, "1": rank 1's}}). The
cross-rank rules (rules/distributed/, TD6xx) are ordinary rules over it, run by the merge;
`traindoctor report RUN_DIR` merges, so folds, again.

Only the folded signals are kept, unthinned (a fingerprint step thinned out of one rank's
middle and not another's would compare nothing); they are sparse (fingerprint steps) or one
number per step.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..findings import Finding
from ..timeline import Timeline
from ..timeline_store import read_timeline
from .ranks import rank_dir

# A rank's signal -> the job signal that holds it per rank.
FOLDED = {
    "ranks.param_fp": "job.param_fp",
    "ranks.buffer_fp": "job.buffer_fp",
    "ranks.bypass": "job.bypass",
    "data.fp": "job.data_fp",
    "data.samples": "job.data_samples",
    "loss.backward": "job.loss",
    "numerics.nonfinite": "job.nonfinite",
    "grads.none": "job.grads_none",
    "ranks.sync": "job.sync",
    "ranks.save": "job.save",
    "ranks.loader": "job.loader",
    "ranks.collectives": "job.collectives",
}
DDP = "ranks.ddp"  # folded at step 0: its last value per rank
# What a rank logged inside its validations (doc.validating(), the frameworks' validation
# loops): folded into `job.val` at the validation steps only, one value per name (TD609).
VAL_LOSS = "loss.val"
METRIC_PREFIX = "metric."
JOB_VAL = "job.val"
# The rank facts the job timeline keeps (from the lowest rank that has them): what diagnose
# needs to judge a timeline at all, the rules the job was judged with, the params' names.
KEPT_FACTS = ("models", "config", "params")


class _Sink:
    """What read_timeline feeds a rank's signals to: the folded ones kept, nothing thinned."""

    def __init__(self) -> None:
        self.signals: dict[str, dict[int, Any]] = defaultdict(dict)

    def record(self, step: int, name: str, value: Any, key: str | None = None) -> None:
        if name not in FOLDED and name != DDP and not _validation_signal(name):
            return
        if key is None:
            self.signals[name][step] = value
        else:
            self.signals[name].setdefault(step, {})[key] = value

    def compact(self) -> None:
        pass


def fold(job_dir: Path, world_size: int) -> Timeline:
    """The job timeline of the ranks whose timeline.jsonl can be read (a rank still running or
    killed contributes what its stream holds)."""
    tl = Timeline(bounded=False)
    read: dict[str, dict[str, Any]] = {}
    ddp: dict[str, Any] = {}
    for r in range(world_size):
        path = rank_dir(job_dir, r) / "timeline.jsonl"
        if not path.is_file():
            continue
        sink = _Sink()
        try:
            loaded = read_timeline(path, sink=sink)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        rank = str(r)
        read[rank] = {
            "last_step": loaded.last_step,
            "ended": loaded.ended,
            "outcome": loaded.facts.get("outcome"),
        }
        for key in KEPT_FACTS:
            if key not in tl.facts and key in loaded.facts:
                tl.facts[key] = loaded.facts[key]
        for step, values in _validation_values(sink.signals, loaded).items():
            tl.record(step, JOB_VAL, values, key=rank)
        for name, data in sink.signals.items():
            if _validation_signal(name):
                continue
            if name == DDP:
                if data:
                    ddp[rank] = data[max(data)]
                continue
            job = FOLDED[name]
            for step in sorted(data):
                tl.record(step, job, data[step], key=rank)
    tl.record(0, "job.ranks", read)
    if ddp:
        tl.record(0, "job.ddp", ddp)
    tl.last_step = max((v["last_step"] for v in read.values()), default=0)
    return tl


def _validation_signal(name: str) -> bool:
    return name == VAL_LOSS or name.startswith(METRIC_PREFIX)


def _validation_values(signals: dict[str, dict[int, Any]], loaded: Any) -> dict[int, dict]:
    """{validation step: {name: the one value logged}} of one rank: the validation loss
    ("loss") and the metrics the rank logged inside a validation (its `validation_metrics`
    fact), at the steps where it began a validation, where that name got exactly one value
    (several are per-batch values, or a training value logged at the same step: not judged)."""
    steps = {
        int(e["step"])
        for e in loaded.events
        if isinstance(e, dict) and e.get("kind") == "validation" and "step" in e
    }
    if not steps:
        return {}
    names = {VAL_LOSS: "loss"}
    for m in loaded.facts.get("validation_metrics") or []:
        if isinstance(m, str):
            names[METRIC_PREFIX + m] = m
    out: dict[int, dict] = {}
    for sig, label in names.items():
        for step, value in signals.get(sig, {}).items():
            if step not in steps:
                continue
            if isinstance(value, list):
                if len(value) != 1:
                    continue
                value = value[0]
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.setdefault(step, {})[label] = float(value)
    return out


def job_rules(recorded_config: Any = None) -> list[Any]:
    """The cross-rank rules (those reading a job signal), as the ranks' configuration selects."""
    from ..rules import all_rules

    rules = all_rules()
    if isinstance(recorded_config, dict):
        try:
            from ..config import Settings

            rules = Settings.recorded(recorded_config).rules()
        except Exception:  # noqa: BLE001  (an unreadable configuration: every rule)
            rules = all_rules()
    return [r for r in rules if any(s.startswith("job.") for s in r.requires)]


def cross_rank_findings(
    job_dir: Path, world_size: int
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """The cross-rank rules' findings over the job timeline, each with the ranks it names
    (`evidence["ranks"]`), and the internal errors met (a rule or the fold that raised).
    Never raises: the merge must go on without them."""
    from dataclasses import replace

    from .._guard import Guard
    from ..diagnosis import diagnose

    guard = Guard()
    try:
        tl = fold(Path(job_dir), world_size)
        found = diagnose(tl, job_rules(tl.facts.get("config")), guard)
    except Exception as exc:  # noqa: BLE001
        guard.record("job timeline", exc)
        found = []
    out = []
    for f in found:
        ranks = f.evidence.get("ranks")
        if isinstance(ranks, list) and all(isinstance(r, int) for r in ranks):
            f = replace(f, ranks=tuple(sorted(set(ranks))))
        out.append(f)
    return out, [e.to_dict() for e in guard.errors]

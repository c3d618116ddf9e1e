"""The job's one report: each rank's findings merged, with what became of every rank.

Layout of a distributed job's run directory (RUN_DIR = out/<run id>, the same for every rank):

    RUN_DIR/findings.json, report.md, report.html     the job's merged report
    RUN_DIR/ranks/rank<N>/rank.json                   who wrote it (rank, world, host, pid)
    RUN_DIR/ranks/rank<N>/timeline.jsonl ...          that rank's own run directory

Every rank writes its own directory as a single run does. At its close, a rank merges when
every rank is done (closed, dead: its process is gone from this host, or never watched); rank 0
also merges at its close after waiting for the running ones a few seconds at most (TRAINDOCTOR_MERGE_WAIT, default
5), so the job has a report even when a rank hangs or runs on. Whoever closes last writes the
complete one. The merges are serialized by a lock file, taken for a bounded time only. Nothing
here is called before close: training never waits.

A finding of the job is one per code and location (Finding.key()), with the ranks that showed
it; its step, evidence and count are those of the lowest of those ranks, its first and last
steps the earliest and latest over them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..findings import Finding, rank
from ..report.model import Report
from .job_timeline import cross_rank_findings
from .ranks import RANKS_DIR, RankInfo, alive, process_identity, rank_dir

RANK_META = "rank.json"
WAIT_ENV = "TRAINDOCTOR_MERGE_WAIT"
DEFAULT_WAIT_S = 5.0
LOCK_WAIT_S = 10.0
POLL_S = 0.1
TAIL_BYTES = 1 << 16
_LAST_STEP = re.compile(rb'"last_step":\s*(\d+)')

# closed: its findings.json is written. killed: it never closed and its process is gone
# (SIGKILL, out of memory, torn down by the launcher). running: it never closed and its process
# still runs on this host (still training, or hung). missing: it wrote nothing (never attached).
CLOSED, KILLED, RUNNING, MISSING = "closed", "killed", "running", "missing"


@dataclass
class RankResult:
    rank: int
    status: str
    steps: int
    exit: dict[str, Any] | None
    report: Report | None  # its findings: closed, or re-diagnosed (traindoctor report)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "status": self.status,
            "steps": self.steps,
            "exit": self.exit,
            "dir": f"{RANKS_DIR}/rank{self.rank}",
        }


def is_job_dir(run_dir: Path) -> bool:
    return (Path(run_dir) / RANKS_DIR).is_dir()


def write_rank_meta(rdir: Path, info: RankInfo, run_id: str) -> None:
    from ..report import atomic_write

    meta = {**info.to_dict(), **process_identity(), "run_id": run_id}
    atomic_write(Path(rdir) / RANK_META, [json.dumps(meta, indent=2) + "\n"])


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def world_size_of(job_dir: Path) -> int:
    """The job's world size, from what its ranks (or an earlier merge) wrote."""
    sizes = []
    merged = _read_json(Path(job_dir) / "findings.json")
    if merged and isinstance(merged.get("world_size"), int):
        sizes.append(merged["world_size"])
    for meta_path in (Path(job_dir) / RANKS_DIR).glob(f"rank*/{RANK_META}"):
        meta = _read_json(meta_path)
        if meta and isinstance(meta.get("world_size"), int):
            sizes.append(meta["world_size"])
    for d in (Path(job_dir) / RANKS_DIR).glob("rank*"):
        if d.name[4:].isdigit():
            sizes.append(int(d.name[4:]) + 1)
    return max(sizes, default=0)


def _tail_last_step(path: Path) -> int:
    """The last step a streamed timeline recorded, from its tail (a killed rank's file may be
    large; its last records carry `last_step`)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            tail = fh.read()
    except OSError:
        return 0
    found = _LAST_STEP.findall(tail)
    return int(found[-1]) if found else 0


def scan(
    job_dir: Path,
    world_size: int,
    unclosed: Callable[[Path], Report] | None = None,
    closed: Callable[[Path], Report] | None = None,
) -> list[RankResult]:
    """What became of each rank, from its files. `unclosed(rank_dir)` re-diagnoses a rank
    that never closed (`traindoctor report`); at a live close, such a rank's findings are not
    read (its timeline may still be written) and it is reported by its status alone."""
    results = []
    for r in range(world_size):
        rdir = rank_dir(job_dir, r)
        data = _read_json(rdir / "findings.json")
        if data is not None:
            try:
                rep = closed(rdir) if closed is not None else Report.from_dict(data, run_dir=rdir)
            except (ValueError, KeyError, TypeError):
                rep = None
            if rep is not None:
                results.append(RankResult(r, CLOSED, rep.steps, _exit(rep.outcome), rep))
                continue
        meta = _read_json(rdir / RANK_META) or {}
        timeline = rdir / "timeline.jsonl"
        if not timeline.is_file() and not meta:
            results.append(RankResult(r, MISSING, 0, None, None))
            continue
        status = RUNNING if alive(meta) else KILLED
        steps = _tail_last_step(timeline)
        rep = None
        if unclosed is not None and timeline.is_file():
            rep = unclosed(rdir)
            steps = rep.steps
        exit_ = {"ended": "killed", "step": steps} if status == KILLED else None
        results.append(RankResult(r, status, steps, exit_, rep))
    return results


# What a rank's `exit` keeps of its `run`: how it ended. The rules it could not judge are the
# job's `run.skipped_rules`; its overhead and the rest stay in its own findings.json.
EXIT_KEYS = ("ended", "step", "exception", "source", "signal", "reason", "observed")


def _exit(outcome: dict[str, Any]) -> dict[str, Any]:
    """How a closed rank ended, from its `run`."""
    return {k: outcome[k] for k in EXIT_KEYS if k in outcome}


def merge(job_dir: Path, world_size: int, results: list[RankResult]) -> Report:
    """The job's report from its ranks' results (a pure function of them: the same files give
    the same report, whichever rank merges)."""
    groups: dict[tuple, list[tuple[int, Finding]]] = {}
    for res in results:
        if res.report is None:
            continue
        for f in res.report.findings:
            groups.setdefault(f.key(), []).append((res.rank, f))
    findings = []
    for shown in groups.values():
        shown.sort(key=lambda rf: rf[0])
        first = shown[0][1]
        steps = [s for _, f in shown for s in (f.first_step, f.step, f.last_step) if s is not None]
        findings.append(
            replace(
                first,
                ranks=tuple(sorted({r for r, _ in shown})),
                first_step=min(steps) if steps else None,
                last_step=max(steps) if steps else None,
            )
        )
    skipped: dict[str, Any] = {}
    errors = []
    framework = "plain"
    for res in results:
        if res.report is None:
            continue
        if framework == "plain":
            framework = res.report.framework
        for s in res.report.outcome.get("skipped_rules") or []:
            skipped.setdefault(str(s.get("code")), s)
        errors += [{**e, "rank": res.rank} for e in res.report.internal_errors]
    # The cross-rank rules (TD6xx) over the ranks' timelines side by side (job_timeline.py).
    cross, cross_errors = cross_rank_findings(job_dir, world_size)
    findings += cross
    errors += cross_errors
    outcome = job_outcome(results)
    outcome["skipped_rules"] = [skipped[k] for k in sorted(skipped)]
    return Report(
        findings=rank(findings),
        steps=max((res.steps for res in results), default=0),
        framework=framework,
        outcome=outcome,
        internal_errors=errors,
        run_dir=Path(job_dir),
        world_size=world_size,
        ranks=[res.to_dict() for res in results],
    )


def job_outcome(results: list[RankResult]) -> dict[str, Any]:
    """How the job ended: normally or by --max-steps when every watched rank did; else
    `abnormal`, with the ranks that did not (report.ranks says how each ended). A rank that
    was never watched (`missing`: an integration that watches rank 0 only) is listed apart."""
    step = max((res.steps for res in results), default=0)
    watched = [res for res in results if res.status != MISSING]
    ended = [(res.exit or {}).get("ended") if res.status == CLOSED else None for res in watched]
    if all(e == "normal" for e in ended):
        out: dict[str, Any] = {"ended": "normal", "step": step}
    elif all(e in ("normal", "max_steps") for e in ended):
        out = {"ended": "max_steps", "step": step}
    else:
        bad = [
            res.rank
            for res, e in zip(watched, ended, strict=True)
            if e not in ("normal", "max_steps")
        ]
        out = {"ended": "abnormal", "step": step, "abnormal_ranks": bad}
    unwatched = [res.rank for res in results if res.status == MISSING]
    if unwatched:
        out["unwatched_ranks"] = unwatched
    return out


def write_job(report: Report) -> None:
    """findings.json, report.md and report.html of the job (no plots: each rank has its own)."""
    from ..report import atomic_write, render_markdown
    from ..report.html import render_html

    job_dir = Path(report.run_dir)  # type: ignore[arg-type]
    atomic_write(job_dir / "findings.json", [json.dumps(report.to_dict(), indent=2) + "\n"])
    atomic_write(job_dir / "report.md", [render_markdown(report)])
    atomic_write(job_dir / "report.html", [render_html(report, None)])


@contextlib.contextmanager
def _merge_lock(job_dir: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """One merge at a time, so the last writer has seen the newest state. Taken for
    `wait_s` at most: past it (or where flock does not exist) the merge goes on unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (Windows)
        yield
        return
    fd = None
    with contextlib.suppress(OSError):
        fd = os.open(Path(job_dir) / ".merge.lock", os.O_CREAT | os.O_RDWR, 0o644)
    locked = False
    deadline = time.monotonic() + wait_s
    while fd is not None and not locked:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError:
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def merge_wait_s() -> float:
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S)))
    except ValueError:
        return DEFAULT_WAIT_S


def merge_at_close(job_dir: Path, info: RankInfo, wait_s: float | None = None) -> Report | None:
    """Called by each rank once its own report is written. Returns the job's report where this
    rank wrote it, else None (another rank is still to close and will write it)."""
    job_dir = Path(job_dir)
    wait_s = merge_wait_s() if wait_s is None else wait_s
    deadline = time.monotonic() + (wait_s if info.rank == 0 else 0.0)
    while True:
        results = scan(job_dir, info.world_size)
        # A rank that never attached (missing) is not waited for: by the time a rank closes,
        # every rank that watches has long attached (an integration may watch rank 0 only).
        if not any(res.status == RUNNING for res in results):
            break  # every watched rank closed or dead: this is the complete report
        if time.monotonic() >= deadline:
            if info.rank != 0:
                return None  # rank 0, or the last rank to close, writes it
            break
        time.sleep(POLL_S)
    with _merge_lock(job_dir):
        # Scanned again under the lock: a rank that closed meanwhile is not overwritten by a
        # staler view.
        results = scan(job_dir, info.world_size)
        report = merge(job_dir, info.world_size, results)
        write_job(report)
    return report

"""Run ecosystem cases one at a time through run.py, resumably (a long rerun on a shared machine).

    .venv/bin/python ecosystem/resume.py --out /tmp/eco-rerun --src /tmp/snapshot/src \
        --priority TD103,TD105,TD402 --until 15:25

Each finished case appends one JSON line to OUT/done.jsonl (verdict, findings, wall and CPU seconds,
the load average before and after, the traindoctor src measured); a case already there is
skipped, so a later session resumes where this one stopped (same --out). Cases: --only in that
order, else every mutant (with --programs, the unchanged programs first), those whose expected
codes meet --priority first, in the order of the codes listed. --src is passed to run.py as
--traindoctor-src: a snapshot of src/ (`git archive HEAD src | tar -x -C DIR`) keeps one
traindoctor for the whole rerun while the tree changes. One case at a time, always.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = HERE.parent / ".venv" / "bin" / "python"


def ordered_cases(priority: list[str], programs: bool) -> list[str]:
    rows = []
    for path in sorted((HERE / "programs").glob("*/program.json")):
        name = path.parent.name
        if programs:
            rows.append((-1, name))
        mutants = path.parent / "mutants.json"
        for m in json.loads(mutants.read_text()) if mutants.exists() else []:
            ranks = [priority.index(c) for c in m["expected"] if c in priority]
            rows.append((min(ranks, default=len(priority)), f"{name}::{m['name']}"))
    return [case for _, case in sorted(rows, key=lambda r: r[0])]


def _children_cpu() -> float:
    """CPU seconds (user + sys) of every finished child process and its descendants: the case's
    cost, less moved by the load than its wall time (run.py waits for all it starts)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(case: str, out: Path, src: Path | None) -> dict:
    stem = case.replace("::", "__")
    results = out / "results" / f"{stem}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(PYTHON), str(HERE / "run.py"), "--only", case, "-j", "1", "-v"]
    # run.py's --only takes a program name for the program and all its mutants.
    cmd += [] if "::" in case else ["--programs-only"]
    cmd += ["--results", str(results)] + (["--traindoctor-src", str(src)] if src else [])
    load = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    (out / "logs").mkdir(exist_ok=True)
    (out / "logs" / f"{stem}.log").write_text(proc.stdout + "\n--- stderr\n" + proc.stderr)
    try:
        ran = json.loads(results.read_text())["cases"]
        outcome = next(c for c in ran if c["case"] == case)
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        outcome = {"verdict": "RUNNER-FAILED", "note": repr(exc)}
    return {
        "case": case,
        "verdict": outcome.get("verdict"),
        "expected": outcome.get("expected"),
        "findings": " ".join(f"{c}:{s[0].upper()}" for c, s in outcome.get("findings", [])),
        "seconds_plain": round(outcome.get("seconds_plain", 0.0), 1),
        "seconds_td": round(outcome.get("seconds_td", 0.0), 1),
        "wall": round(wall, 1),
        "cpu": round(cpu, 1),
        "steps": outcome.get("steps"),
        "note": outcome.get("note", ""),
        "load": [round(load, 1), round(os.getloadavg()[0], 1)],
        "src": str(src or "installed"),
    }


def _until(hhmm: str, start: datetime.datetime) -> datetime.datetime:
    """The moment --until names: HH:MM UTC on the start's day, or the next day's when that is
    more than 12 hours before the start (a run started at 23:40 with --until 01:10 stops after
    midnight, not at once; one started at 15:30 with --until 15:25 starts nothing)."""
    hour, minute = (int(part) for part in hhmm.split(":"))
    stop = start.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if start - stop > datetime.timedelta(hours=12):
        stop += datetime.timedelta(days=1)
    return stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder of done.jsonl, logs, results")
    ap.add_argument("--src", type=Path, help="traindoctor src/ to measure (run.py's default else)")
    ap.add_argument("--priority", default="", help="comma-separated codes to run first")
    ap.add_argument("--programs", action="store_true", help="the unchanged programs too, first")
    ap.add_argument("--only", nargs="*", help="these cases, in this order")
    ap.add_argument("--until", help="UTC HH:MM: start no case at or after it")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    done_file = args.out / "done.jsonl"
    done = set()
    if done_file.exists():
        done = {json.loads(line)["case"] for line in done_file.read_text().splitlines() if line}
    priority = [c for c in args.priority.split(",") if c]
    stop = _until(args.until, datetime.datetime.now(datetime.timezone.utc)) if args.until else None
    for case in args.only or ordered_cases(priority, args.programs):
        if case in done:
            continue
        now = datetime.datetime.now(datetime.timezone.utc)
        if stop and now >= stop:
            print(f"{args.until} UTC reached: stopping before {case}", flush=True)
            break
        line = {**run_one(case, args.out, args.src), "at": now.strftime("%H:%M")}
        with done_file.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 15's memory bench: how traindoctor's footprint grows with the length of a run.

A cheap synthetic model (a tiny MLP on CPU, `td.watch(..., console=False)`, default settings)
is trained for the longest checkpoint (default 10^5 steps) in one run; at each checkpoint
(10^3, 10^4, 10^5) it prints

- the process RSS (psutil, else /proc/self/statm) after a gc, and its growth since attach;
- the in-memory timeline: `Timeline.size()` records, and its size as JSON (the lines
  `timeline.jsonl` would hold, summed: a rough stand-in for the bytes it keeps alive);
- the time per step over the steps since the previous checkpoint (and, once before, the same
  loop's time per step with nothing attached).

The long run is then closed (its close() time), and fresh runs as long as each shorter
checkpoint are trained and closed, so close() time is measured at every checkpoint size, each
on a run of that length (a run longer than `--close-max` steps is closed with no rules: its
rule pass alone would take many minutes at the base commit, see bench/timeline_replay.py). Each closed run's directory size (and timeline.jsonl's) is divided
by its steps: the on-disk cost per step. Plots are written as by default
(TRAINDOCTOR_PLOTS=0 in the environment skips them).

    OMP_NUM_THREADS=1 python bench/memory_growth.py [--checkpoints 1000,10000,100000] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Loop:
    """A tiny MLP on fixed synthetic batches, watched by traindoctor."""

    def __init__(self, out_dir: str, watched: bool = True) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(512, 8, generator=g)
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
        self.data = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 512, 32)]
        self.doc = (
            td.watch(self.model, self.opt, out_dir=out_dir, console=False) if watched else None
        )
        self.step = 0

    def train(self, until: int) -> tuple[float, float]:
        """Train up to step `until`; seconds per step, wall clock and this process's CPU."""
        t0, c0 = time.perf_counter(), time.process_time()
        n = until - self.step
        for _ in range(n):
            x, y = self.data[self.step % len(self.data)]
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            if self.doc is not None:
                self.doc.log(loss=loss)
            self.step += 1
        n = max(n, 1)
        return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

    def close(self, rules: bool = True) -> dict[str, Any]:
        """close(), timed; without `rules`, the doctor's rule list is emptied first (a bench
        shortcut: a pass over a very long run at the base commit takes many minutes)."""
        if not rules:
            self.doc.rules = []
        t0, c0 = time.perf_counter(), time.process_time()
        report = self.doc.close()
        out: dict[str, Any] = {
            "close s": time.perf_counter() - t0,
            "close cpu s": time.process_time() - c0,
            "rules run": rules,
        }
        run_dir = Path(report.run_dir)
        timeline = run_dir / "timeline.jsonl"
        out["run dir bytes"] = dir_bytes(run_dir)
        out["timeline.jsonl bytes"] = timeline.stat().st_size if timeline.exists() else 0
        out["run dir bytes/step"] = out["run dir bytes"] / self.step
        out["timeline.jsonl bytes/step"] = out["timeline.jsonl bytes"] / self.step
        out["findings"] = [f.code for f in report.findings]
        return out


def snapshot(loop: Loop, base_rss: float, per_step: tuple[float, float]) -> dict[str, Any]:
    gc.collect()
    rss = rss_mb()
    tl = loop.doc.timeline
    json_bytes = sum(len(line) + 1 for line in tl.to_jsonl_lines())
    return {
        "step": loop.step,
        "RSS MB": rss,
        "RSS growth since attach MB": rss - base_rss,
        "timeline records": tl.size(),
        "timeline JSON bytes": json_bytes,
        "timeline JSON bytes/step": json_bytes / loop.step,
        "ms/step since previous checkpoint (wall)": per_step[0] * 1e3,
        "ms/step since previous checkpoint (cpu)": per_step[1] * 1e3,
        "sampling interval": loop.doc.budget.interval,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoints", default="1000,10000,100000")
    ap.add_argument(
        "--close-max",
        type=int,
        default=20000,
        help="a longer run is closed with no rules (its close() time then leaves the rule pass out)",
    )
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    torch.set_num_threads(1)
    print(f"load: {os.getloadavg()}; torch {torch.__version__}, 1 thread")
    result: dict[str, Any] = {"checkpoints": [], "closes": []}
    with tempfile.TemporaryDirectory() as out:
        plain = Loop(out, watched=False)
        plain.train(200)  # warm-up
        wall, cpu = plain.train(2200)  # the same loop, nothing attached
        result["plain ms/step (wall)"], result["plain ms/step (cpu)"] = wall * 1e3, cpu * 1e3
        del plain
        gc.collect()
        rss0 = rss_mb()
        loop = Loop(out)
        gc.collect()
        base = rss_mb()
        result["RSS before attach MB"] = rss0
        result["RSS after attach MB"] = base
        for c in checkpoints:
            per_step = loop.train(c)
            snap = snapshot(loop, base, per_step)
            result["checkpoints"].append(snap)
            print(json.dumps(snap))
        closed = {"steps": loop.step, **loop.close(rules=loop.step <= args.close_max)}
        result["closes"].append(closed)
        print(json.dumps(closed))
        del loop
        for c in checkpoints[:-1]:  # close() time on a fresh run of each shorter length
            short = Loop(out)
            short.train(c)
            closed = {"steps": c, **short.close(rules=c <= args.close_max)}
            result["closes"].append(closed)
            print(json.dumps(closed))
    result["closes"].sort(key=lambda r: r["steps"])
    print(f"load after: {os.getloadavg()}")
    print(f"plain (unwatched) loop: {result['plain ms/step (cpu)']:.3f} ms/step (cpu)")
    for r in result["checkpoints"]:
        print(
            f"step {r['step']:>8}: RSS {r['RSS MB']:.0f} MB (+{r['RSS growth since attach MB']:.1f}),"
            f" timeline {r['timeline records']:,} records, {r['timeline JSON bytes'] / 2**20:.1f} MB"
            f" JSON ({r['timeline JSON bytes/step']:.0f} B/step),"
            f" {r['ms/step since previous checkpoint (cpu)']:.3f} ms/step (cpu)"
        )
    for r in result["closes"]:
        print(
            f"run of {r['steps']:>8} steps: close() {r['close s']:.2f} s"
            f" ({r['close cpu s']:.2f} s cpu)"
            + ("" if r["rules run"] else " (no rules run)")
            + ", run dir"
            f" {r['run dir bytes/step']:.0f} B/step (timeline.jsonl"
            f" {r['timeline.jsonl bytes/step']:.0f} B/step)"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()

"""Issue 15's honest governor: the overhead traindoctor reports next to the side-by-side ratio.

For each model shape of bench/always_on.py (its builders, data and the same step loop) it
trains the same model from the same seed, plain and watched, alternated in one process
(plain, watched, then watched, plain, ...), and prints

- the measured side-by-side ratio: watched / plain summed step time, in this process's CPU
  time and in wall-clock time, for the loop alone and with attach added (the governor's
  figure covers the loop and attach; close() is reported apart);
- what the governor reported in the run's `overhead` fact: the old estimate (1 + the median
  share of step time timed inside our hooks, what report.html showed), the new `ratio` with
  its interval, and the cost model's prediction (`predicted_ratio`);
- the plain step as measured side by side next to the governor's estimate of it, and the
  sampled steps' cost each, both ways;
- close() as measured around it next to the governor's `close_s`.

`--dispatch` also measures what one timed hook call costs outside its own timer (torch's hook
dispatch, the wrapper's frame, the two clock reads): budget.UNTIMED_PER_CALL.

Run with one thread and say the load (`uptime`) next to the figures:

    OMP_NUM_THREADS=1 python bench/governor_honesty.py [--shapes mlp,gpt,resnet,t2000]
        [--steps 300] [--rounds 2] [--dispatch] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from always_on import SHAPES, Run, Shape, Traindoctor, Watcher, describe, rows, run  # noqa: E402

from traindoctor.bus import Event  # noqa: E402


def mlp_tiny() -> torch.nn.Module:
    """A sub-millisecond step: 4 Linear(64, 64) + ReLU, batch 32 (~17k parameters)."""
    layers: list[torch.nn.Module] = []
    for _ in range(4):
        layers += [torch.nn.Linear(64, 64), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, 10))


# always_on.py's shapes, and a step our every-step floor is a large part of.
SHAPES = {
    **SHAPES,
    "tiny": Shape(
        mlp_tiny,
        lambda g: (torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)),
        torch.nn.functional.cross_entropy,
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
    ),
}


class Governed(Traindoctor):
    """traindoctor, keeping the run's `overhead` fact after close() and which steps it sampled."""

    def attach(self, model: torch.nn.Module, opt: torch.optim.Optimizer, out_dir: str) -> None:
        super().attach(model, opt, out_dir)
        # Not `sampled`: always_on.Watcher.sampled() is the method run() calls before each step.
        self.opened: dict[int, bool] = {1: True}  # step 1 opened inside attach
        self.doc.bus.subscribe(Event.STEP_OPENED, self._opened, "bench")

    def _opened(self, step: int, sampled: bool, rec: Any) -> None:
        self.opened[step] = sampled

    def close(self) -> None:
        super().close()
        self.overhead = dict(self.doc.timeline.facts.get("overhead") or {})
        work = self.doc.budget.work
        self.work = work and {k: getattr(work, k) for k in ("modules", "tensors", "elements")}
        self.plan = dict(self.doc.budget.predicted or {})


def old_estimate(overhead: dict[str, Any]) -> float | None:
    """What report.html said before the honest governor: 1 + the median window share."""
    windows = [w for w in overhead.get("windows") or [] if len(w) >= 2]
    if not windows:
        return None
    shares = sorted(float(w[1]) for w in windows)
    return 1.0 + shares[len(shares) // 2]


def compare(name: str, steps: int, rounds: int, out_dir: str) -> dict[str, Any]:
    shape = SHAPES[name]
    plain: list[Run] = []
    watched: list[tuple[Run, Governed]] = []
    for i in range(rounds):
        for w in (False, True) if i % 2 == 0 else (True, False):
            watcher = Governed() if w else Watcher()
            r = run(shape, steps, watcher, out_dir)
            if w:
                watched.append((r, watcher))  # type: ignore[arg-type]
            else:
                plain.append(r)
    out: dict[str, Any] = {"params": describe(shape.build()), "steps": steps, "rounds": rounds}
    for clock, tag in (("cpu", "cpu"), ("times", "wall")):
        w_sum = sum(sum(getattr(r, clock)) for r, _ in watched)
        p_sum = sum(sum(getattr(r, clock)) for r in plain)
        out[f"side by side, loop ({tag})"] = w_sum / p_sum
    attach = sum(r.attach for r, _ in watched)
    # attach is timed in wall only; it is CPU-bound work, added to the CPU loop as it is
    w_cpu = sum(sum(r.cpu) for r, _ in watched)
    out["side by side, loop + attach (cpu)"] = (w_cpu + attach) / sum(sum(r.cpu) for r in plain)
    w_wall = sum(sum(r.times) for r, _ in watched)
    out["side by side, loop + attach (wall)"] = (w_wall + attach) / sum(sum(r.times) for r in plain)
    facts = [g.overhead for _, g in watched]
    out["work (counted)"] = watched[0][1].work
    # In seconds, what watching added (loop in CPU time, attach in wall), next to the
    # governor's `extra_s` (attach in) and the cost model's prediction for the same run.
    n = len(watched)
    out["extra s: side by side (cpu loop + attach)"] = (
        w_cpu + attach - sum(sum(r.cpu) for r in plain)
    ) / n
    out["extra s: governor"] = statistics.fmean(float(f.get("extra_s") or math.nan) for f in facts)
    out["attach s: governor"] = statistics.fmean(
        float(f.get("attach_s") or math.nan) for f in facts
    )
    if all(f.get("predicted_extra_s") is not None for f in facts):
        out["extra s: predicted"] = statistics.fmean(f["predicted_extra_s"] for f in facts)
    out["steps 1-3 extra s: predicted"] = statistics.fmean(
        g.plan.get("structural_s", math.nan) for _, g in watched
    )
    if all(f.get("predicted_every_step_s") is not None for f in facts):
        out["unsampled step x: predicted"] = statistics.fmean(
            1 + f["predicted_every_step_s"] / f["predicted_step_s"] for f in facts
        )
    out.update(by_kind(plain, watched))
    old = [old_estimate(f) for f in facts]
    out["governor before: 1 + median hook share"] = (
        statistics.fmean(x for x in old if x) if any(old) else None
    )
    out["governor before: in-hook s / loop s"] = (
        statistics.fmean(
            float(f.get("seconds_in_traindoctor") or 0) / sum(r.times)
            for f, (r, _) in zip(facts, watched, strict=True)
        )
        + 1.0
    )
    if all("ratio" in f for f in facts):
        out["governor after: ratio"] = statistics.fmean(f["ratio"] for f in facts)
        out["governor after: interval"] = "; ".join(
            f"{f['ratio_low']:.3f}-{f['ratio_high']:.3f}" + (" noisy" if f.get("noisy") else "")
            for f in facts
        )
        out["governor after: predicted_ratio"] = (
            statistics.fmean(
                f["predicted_ratio"] for f in facts if f.get("predicted_ratio") is not None
            )
            if any(f.get("predicted_ratio") is not None for f in facts)
            else None
        )
        plain_ms = statistics.median(t for r in plain for t in r.times[50:]) * 1e3
        out["plain step ms: side by side (median, wall)"] = plain_ms
        out["plain step ms: governor estimate"] = statistics.fmean(
            f["plain_step_s"] * 1e3 for f in facts
        )
        out["plain step ms: predicted"] = (
            statistics.fmean(
                f["predicted_step_s"] * 1e3 for f in facts if f.get("predicted_step_s")
            )
            if any(f.get("predicted_step_s") for f in facts)
            else None
        )
        out["sampled step x: governor"] = (
            statistics.fmean(f["sampled_step_x"] for f in facts if f.get("sampled_step_x"))
            if any(f.get("sampled_step_x") for f in facts)
            else None
        )
        out["sampled step x: predicted"] = (
            statistics.fmean(
                f["predicted_sampled_step_x"] for f in facts if f.get("predicted_sampled_step_x")
            )
            if any(f.get("predicted_sampled_step_x") for f in facts)
            else None
        )
        out["close s: measured around close()"] = statistics.fmean(r.close for r, _ in watched)
        out["close s: governor (rules + detach)"] = statistics.fmean(
            float(f.get("close_s") or 0) for f in facts
        )
        out["summary"] = facts[0].get("summary")
    # Steps 1-3 in plain steps: comparable across clocks (the truth is CPU, the governor wall).
    plain_cpu = statistics.median(t for r in plain for t in r.cpu[50:])
    out["steps 1-3 extra, plain steps: side by side (cpu)"] = (
        out["steps 1-3 extra s: side by side (cpu)"] / plain_cpu
    )
    if all(f.get("plain_step_s") for f in facts):
        out["steps 1-3 extra, plain steps: governor"] = statistics.fmean(
            f.get("structural_s", math.nan) / f["plain_step_s"] for f in facts
        )
    out["plain step ms (median, cpu)"] = plain_cpu * 1e3
    out["sampling interval at end"] = facts[0].get("final_sample_interval")
    out["attach s"] = statistics.fmean(r.attach for r, _ in watched)
    out["bit-identical params"] = all(
        all(torch.equal(a, b) for a, b in zip(w.params, p.params, strict=True))
        for (w, _), p in zip(watched, plain, strict=True)
    )
    return out


def by_kind(plain: list[Run], watched: list[tuple[Run, Governed]]) -> dict[str, Any]:
    """The side-by-side truth per kind of step, in CPU time, each watched run against the plain
    run of its round at the same step indices: steps 1-3 (extra seconds), sampled and unsampled
    steps after them (ratio of medians), next to the governor's figures for the same run."""
    out: dict[str, list[float]] = {k: [] for k in ("s13", "sx", "ux", "gs13", "gsx", "gux")}
    for p, (w, g) in zip(plain, watched, strict=True):
        kinds = {"sampled": [], "unsampled": []}  # type: dict[str, list[int]]
        for i in range(3, len(w.cpu)):
            kinds["sampled" if g.opened.get(i + 1) else "unsampled"].append(i)
        out["s13"].append(sum(w.cpu[:3]) - sum(p.cpu[:3]))
        for key, kind in (("sx", "sampled"), ("ux", "unsampled")):
            idx = kinds[kind]
            if idx:
                wm = statistics.median(w.cpu[i] for i in idx)
                out[key].append(wm / statistics.median(p.cpu[i] for i in idx))
        o = g.overhead
        out["gs13"].append(o.get("structural_s", math.nan))
        out["gsx"].append(o.get("sampled_step_x") or math.nan)
        out["gux"].append(o.get("every_step_x", math.nan))
    mean = statistics.fmean
    return {
        "steps 1-3 extra s: side by side (cpu)": mean(out["s13"]),
        "steps 1-3 extra s: governor": mean(out["gs13"]),
        "sampled step x: side by side (cpu, medians)": mean(out["sx"]) if out["sx"] else None,
        "unsampled step x: side by side (cpu, medians)": mean(out["ux"]) if out["ux"] else None,
        "unsampled step x: governor": mean(out["gux"]),
        # Each round apart: the truth's own spread, next to the governor's run by run (an
        # error smaller than the rounds' spread cannot be told from this machine's noise).
        "unsampled step x per round: side by side / governor": "; ".join(
            f"{s:.3f} / {g:.3f}" for s, g in zip(out["ux"], out["gux"], strict=False)
        ),
    }


def dispatch_cost(modules: int = 200, repeats: int = 300) -> dict[str, float]:
    """One timed hook call's cost outside its own timer: a forward pass of tiny Linear layers
    without hooks, then with a self-timing pre- and post-hook on each (as AttachContext.hook
    wraps them), minus the time the hooks measured themselves, per hook call."""
    from traindoctor._hooks import CopySafeHook

    clock = time.perf_counter
    spent = [0.0, 0]

    def make() -> CopySafeHook:
        def guarded(*args: Any, **kwargs: Any) -> None:
            t0 = clock()
            spent[0] += clock() - t0
            spent[1] += 1

        return CopySafeHook(guarded)

    model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(modules)))
    x = torch.randn(2, 4)

    def forward_s() -> float:
        times = []
        with torch.no_grad():
            for _ in range(repeats):
                t0 = clock()
                model(x)
                times.append(clock() - t0)
        return statistics.median(times)

    base = forward_s()
    handles = [m.register_forward_pre_hook(make()) for m in model]
    handles += [m.register_forward_hook(make()) for m in model]
    spent[:] = [0.0, 0]
    hooked = forward_s()
    for h in handles:
        h.remove()
    timed = spent[0] / max(spent[1], 1)
    return {
        "plain forward us/module": base / modules * 1e6,
        "hooked forward us/module": hooked / modules * 1e6,
        "untimed us per hook call": ((hooked - base) / (2 * modules) - timed) * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", default="tiny,mlp,gpt,resnet,t2000")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dispatch", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"load: {os.getloadavg()}; torch {torch.__version__}, 1 thread")
    results: dict[str, dict[str, Any]] = {}
    if args.dispatch:
        results["dispatch"] = dispatch_cost()
        print(json.dumps(results["dispatch"]))
    with tempfile.TemporaryDirectory() as out:
        # Warm-up: the allocator and kernels, and traindoctor's lazily imported modules (the
        # first watched run would count their import as attach).
        run(SHAPES["mlp"], 10, Watcher(), out)
        run(SHAPES["tiny"], 10, Governed(), out)
        for name in [s for s in args.shapes.split(",") if s]:
            t0 = time.perf_counter()
            results[name] = compare(name, args.steps, args.rounds, out)
            print(f"{name}: done in {time.perf_counter() - t0:.0f} s, load {os.getloadavg()}")
            print(json.dumps(results[name], default=str))
    print(f"load after: {os.getloadavg()}")
    print("\n".join(rows({k: v for k, v in results.items() if k != "dispatch"})))
    print("\nshape: side by side (cpu loop + attach) | governor ratio (gap) | predicted (gap)")
    for name, r in results.items():
        if name == "dispatch":
            continue
        truth = r["side by side, loop + attach (cpu)"]
        gov, pred = r.get("governor after: ratio"), r.get("governor after: predicted_ratio")
        cells = [f"{truth:.3f}"]
        for est in (gov, pred):
            cells.append("-" if est is None else f"{est:.3f} ({100 * (est - truth):+.1f} pt)")
        print(f"{name}: " + " | ".join(cells))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()

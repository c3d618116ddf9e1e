"""Issue 15's rule-pass bench: what one diagnosis pass costs as the run grows.

A real run gives the template: one bundled scenario (default `loss_unclamped`, a healthy
classifier with a validation every 10 steps) is trained for `--template-steps` steps under
td.watch, and its run directory's timeline.jsonl is read back. Its signals and events are then
tiled to N steps: the template's first three quarters are kept as they are (the structural
steps, the first-32-steps data fingerprints, the loss falling), and the steps after take the
records of its last quarter, where the loss has levelled off, played forward then backward
(no jump where one copy ends and the next begins: a sawtooth loss read as a spike) with every
signal at its own phase (every-step signals every step, sampled signals every sampled step,
validations every 10 steps), every float multiplied by 1 + 2% Gaussian noise (a fixed seed)
so that no series is exactly periodic. The synthetic run's findings are printed: they should
be the template's. The sampling interval is the template's (10: the scenario runs with a fixed
schedule; a live run's interval moves between 10 and 1000 with the model's cost, so this is
the dense end).

At each N (10^3 to 10^5 by default, with sizes between for the slope; `--max 1000000` adds
10^6) it times one full pass (`traindoctor.diagnosis.diagnose` over every rule) and each rule
alone on the same timeline, in CPU time (time.process_time), and prints the top 10 costliest
rules with their growth exponent (the slope of log time over log N between the last two
sizes: 1 is linear, 2 quadratic). A size whose full pass the slope so far predicts to exceed
`--budget-s` is skipped, with the prediction.

    OMP_NUM_THREADS=1 python bench/timeline_replay.py [--max 100000] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from traindoctor._guard import Guard
from traindoctor.diagnosis import diagnose
from traindoctor.rules import all_rules
from traindoctor.timeline import Timeline


def template_timeline(scenario: str, steps: int) -> Timeline:
    """The timeline of a real (short) run of one bundled scenario, read back from disk."""
    from traindoctor.scenarios import all_scenarios
    from traindoctor.scenarios.demo import run_scenario

    found = [s for s in all_scenarios() if s.name == scenario]
    if not found:
        raise SystemExit(f"no scenario named {scenario!r}")
    os.environ.setdefault("TRAINDOCTOR_PLOTS", "0")
    with tempfile.TemporaryDirectory() as out:
        report = run_scenario(found[0], out_dir=out, watch=True, steps=steps)
        return Timeline.from_jsonl(Path(report.run_dir) / "timeline.jsonl")


def jitter(value: Any, rng: random.Random) -> Any:
    """`value` with every finite float scaled by 1 + 2% noise; ints, strings, bools kept."""
    if isinstance(value, float):
        return value * (1.0 + 0.02 * rng.gauss(0.0, 1.0)) if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: jitter(v, rng) for k, v in value.items()}
    if isinstance(value, list):
        return [jitter(v, rng) for v in value]
    return value


def synthesize(template: Timeline, n: int, seed: int = 0) -> Timeline:
    """`template` tiled to `n` steps (see the module docstring)."""
    last = template.last_step
    keep = last - last // 4  # steps kept verbatim; the last quarter is tiled after them
    period = last - keep
    by_step: dict[int, list[tuple[str, Any]]] = {}
    for name in template.signal_names():
        for step, value in template.series(name):
            by_step.setdefault(step, []).append((name, value))
    events_by_step: dict[int, list[dict[str, Any]]] = {}
    for event in template.events():
        events_by_step.setdefault(event["step"], []).append(event)
    rng = random.Random(seed)
    tl = Timeline()
    tl.facts = copy.deepcopy(template.facts)
    indexes: dict[str, int] = {}
    first = min([*by_step, *events_by_step, 1])
    for step in range(first, n + 1):
        phase = (step - keep - 1) % (2 * period)  # forward, then backward: continuous
        src = step if step <= keep else keep + 1 + min(phase, 2 * period - 1 - phase)
        for name, value in by_step.get(src, ()):
            tl.record(step, name, jitter(value, rng))
        for event in events_by_step.get(src, ()):
            fields = {k: v for k, v in event.items() if k not in ("step", "kind")}
            kind = event["kind"]
            if isinstance(fields.get("index"), int):  # validations are numbered in order
                fields["index"] = indexes.get(kind, 0)
                indexes[kind] = fields["index"] + 1
            tl.event(step, kind, **fields)
    tl.last_step = n
    outcome = tl.facts.get("outcome")
    if isinstance(outcome, dict) and "steps" in outcome:
        outcome["steps"] = n
    return tl


def timed(fn: Any, min_total: float = 0.3, max_reps: int = 5) -> float:
    """Best of a few runs of `fn` (one run when it is slow), in this process's CPU time: on a
    machine other jobs share, the time spent waiting for a core is left out."""
    best, total, reps = math.inf, 0.0, 0
    while reps < max_reps and (reps == 0 or total < min_total):
        gc.collect()  # a pending full collection is not charged to the next rule timed
        t0 = time.process_time()
        fn()
        dt = time.process_time() - t0
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


def slope(points: list[tuple[int, float]]) -> float | None:
    """log-log slope between the last two (N, seconds) points."""
    if len(points) < 2:
        return None
    (n0, t0), (n1, t1) = points[-2], points[-1]
    if t0 <= 0 or t1 <= 0:
        return None
    return math.log(t1 / t0) / math.log(n1 / n0)


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="loss_unclamped")
    ap.add_argument("--template-steps", type=int, default=400)
    ap.add_argument("--timeline", help="use this timeline.jsonl as the template instead")
    ap.add_argument("--sizes", default="1000,2000,5000,10000,20000,50000,100000,1000000")
    ap.add_argument("--max", type=int, default=100000, help="largest N (1000000 for 10^6)")
    ap.add_argument("--budget-s", type=float, default=120.0, help="skip a longer full pass")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    print(f"load: {os.getloadavg()}")
    if args.timeline:
        template = Timeline.from_jsonl(Path(args.timeline))
    else:
        template = template_timeline(args.scenario, args.template_steps)
    print(
        f"template: {args.timeline or args.scenario}, {template.last_step} steps,"
        f" {template.size():,} records, {len(template.signal_names())} signals"
    )
    rules = all_rules()
    sizes = [int(s) for s in args.sizes.split(",") if int(s) <= args.max]
    full: list[tuple[int, float]] = []
    per_rule: dict[str, list[tuple[int, float]]] = {r.code: [] for r in rules}
    result: dict[str, Any] = {"template": args.timeline or args.scenario, "sizes": []}
    for n in sizes:
        k = slope(full)
        if full and k is not None:
            predicted = full[-1][1] * (n / full[-1][0]) ** k
            if predicted > args.budget_s:
                print(f"N={n:,}: skipped, full pass predicted {predicted:.0f} s (slope {k:.2f})")
                result["sizes"].append({"N": n, "skipped": f"predicted {predicted:.0f} s"})
                continue
        gc.collect()
        rss0 = rss_mb()
        t0 = time.perf_counter()
        tl = synthesize(template, n)
        built = time.perf_counter() - t0
        gc.collect()
        # The timeline moves to the permanent generation: a collection (one before each timed
        # pass, and any a pass triggers) no longer walks its millions of objects.
        gc.freeze()
        guard = Guard()
        findings: list[Any] = []

        def full_pass(tl: Timeline = tl, guard: Guard = guard, out: list = findings) -> None:
            # A shallow copy is a new timeline to diagnose(): rules that keep state per
            # timeline (incremental passes) start afresh, so every repeat is a full pass.
            out[:] = diagnose(copy.copy(tl), rules, guard)

        def one_rule(r: Any, tl: Timeline = tl, guard: Guard = guard) -> None:
            guard.call(f"rule {r.code}", r.run, tl.view(r))

        t_full = timed(full_pass)
        full.append((n, t_full))
        times: dict[str, float] = {}
        for r in rules:
            t = timed(lambda r=r, one_rule=one_rule: one_rule(r))
            times[r.code] = t
            per_rule[r.code].append((n, t))
        entry: dict[str, Any] = {
            "N": n,
            "records": tl.size(),
            "build s": built,
            "RSS growth MB": rss_mb() - rss0,
            "full pass s": t_full,
            "sum of rules s": sum(times.values()),
            "full pass slope": slope(full),
            "findings": sorted({f.code for f in findings}),
            "internal errors": [e.to_dict() for e in guard.errors],
            "rules s": times,
        }
        top = sorted(times, key=times.get, reverse=True)[: args.top]
        entry["top"] = [(c, times[c], slope(per_rule[c])) for c in top]
        result["sizes"].append(entry)
        k = entry["full pass slope"]
        print(
            f"N={n:,}: {entry['records']:,} records (built in {built:.1f} s, +{entry['RSS growth MB']:.0f} MB),"
            f" full pass {t_full:.3f} s"
            + (f" (slope {k:.2f})" if k is not None else "")
            + f", findings {entry['findings']}, internal errors {len(guard.errors)}"
        )
        for code, t, s in entry["top"]:
            print(
                f"    {code:8} {t * 1e3:10.1f} ms" + (f"  slope {s:.2f}" if s is not None else "")
            )
        del tl, guard, full_pass, one_rule
        gc.unfreeze()
    print(f"load after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1, default=str)


if __name__ == "__main__":
    main()

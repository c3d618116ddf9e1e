"""Issue 15's live-run rule passes: what a pass costs when the rules keep their state.

bench/timeline_replay.py times a fresh pass (a new timeline, as `report --rediagnose` runs).
A live run instead diagnoses the same timeline again and again (every 2000 steps after step
5000, and once more at close()), and the rules declared with `@rule(state=...)` then read only
the records written since their last pass. This bench writes timeline_replay's synthetic run
(the `loss_unclamped` template tiled to N steps) step by step into a live timeline, thinned as
the live Doctor thins it (Timeline.compact every 25 steps: timeline_retention.py), runs
`diagnose()` over every rule every `--every` steps, and at each checkpoint prints, in CPU ms:
each stateful rule's pass (the records of the last `--every` steps), the same rule's fresh
pass over the (bounded) timeline, the whole pass (every rule), the `--top` costliest rules'
passes, and the records the live timeline holds.

    OMP_NUM_THREADS=1 python bench/incremental_passes.py [--max 1000000] [--every 2000]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timeline_replay import synthesize, template_timeline  # noqa: E402

from traindoctor._guard import Guard  # noqa: E402
from traindoctor.diagnosis import diagnose  # noqa: E402
from traindoctor.rules import all_rules  # noqa: E402
from traindoctor.timeline import Timeline  # noqa: E402


def cpu_ms(fn) -> float:  # noqa: ANN001
    # A full collection left pending by the previous pass would be charged to whichever rule
    # allocates next (hundreds of ms on a 10^5-step heap): collected before, not timed.
    gc.collect()
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=2000)
    ap.add_argument("--template", default="loss_unclamped")
    ap.add_argument("--template-steps", type=int, default=400)
    ap.add_argument("--top", type=int, default=12, help="the costliest passes listed")
    args = ap.parse_args()
    marks = {n for n in (10_000, 100_000, 1_000_000) if n <= args.max} | {args.max}
    print(f"load: {os.getloadavg()}")
    src = synthesize(template_timeline(args.template, args.template_steps), args.max)
    rules = all_rules()
    stateful = [r for r in rules if r.state is not None]
    print(f"stateful rules: {[r.code for r in stateful]}; {len(rules)} rules in all")
    live = Timeline()
    live.facts = src.facts
    events = sorted(src.events(), key=lambda e: e["step"])
    guard = Guard()
    for step, signals in src.steps().items():
        while events and events[0]["step"] <= step:
            e = dict(events.pop(0))
            live.event(e.pop("step"), e.pop("kind"), **e)
        for name, value in signals.items():
            live.record(step, name, value)
        live.last_step = step
        if step % 25 == 0:
            live.compact()
        if step % args.every and step not in marks:
            continue
        if step not in marks:
            diagnose(live, rules, guard)
            continue
        per = {r.code: cpu_ms(lambda r=r: diagnose(live, [r], guard)) for r in rules}
        fresh = {r.code: cpu_ms(lambda r=r: r.run(live.view(r))) for r in stateful}
        inc = ", ".join(f"{r.code} {per[r.code]:.1f}" for r in stateful)
        frs = ", ".join(f"{r.code} {fresh[r.code]:.0f}" for r in stateful)
        print(
            f"step {step}: stateful rules' pass {inc} ms (fresh: {frs} ms); every rule "
            f"{sum(per.values()):.0f} ms, of which stateless "
            f"{sum(per.values()) - sum(per[r.code] for r in stateful):.0f}; the live timeline "
            f"holds {live.size():,} records",
            flush=True,
        )
        top = sorted(per, key=per.get, reverse=True)[: args.top]
        print("    costliest passes: " + ", ".join(f"{c} {per[c]:.1f}" for c in top) + " ms")
    print(f"internal errors: {len(guard.errors)}; load: {os.getloadavg()}")


if __name__ == "__main__":
    main()

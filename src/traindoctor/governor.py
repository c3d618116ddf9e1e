"""What watching costs the run, measured from the run's own step times: for the report only.

Timing inside our hooks misses what happens around them (torch leaving its hook-free fast path
for a hooked module, the hook's frame, caches and allocator state our work disturbs): on the
MLP the side-by-side ratio was about twice the timed share. So the governor times every step,
wall clock from one step's end to the next, and splits the steps by kind:

- unsampled steps: their wall minus what they spent in our timed sections, minus what those
  sections cost outside their own timers (counted: `UNTIMED_PER_CALL` per timed call and per
  call of a hook that times nothing itself, `_hooks.UNTIMED_HOOK_CALLS`), is a plain step;
  the median of these is the plain-step estimate;
- sampled steps: each costs the median sampled wall minus the plain estimate;
- structural steps: steps 2-3 likewise (their wall minus the plain estimate); step 1's wall
  also holds whatever the script did since attach, so step 1 counts as a plain step plus
  its timed cost;
- steps that ran a mid-run diagnosis pass: the pass's own time plus their kind's cost;
- attach, timed around it; close() apart (`close_s`: detach and the rules, before the files).

    ratio = 1 + extra / (sum of step walls - extra of the steps)

where extra adds the costs above and attach: the summed walls hold the user's own irregular
work (validation, data stalls) on both sides, as a side-by-side comparison would. Step walls
enter as medians, not means, with an interval from their notches (1.57 IQR / sqrt(n)); a wide
one is called noisy. Timed costs are summed. One clock read more per step end, and samples
bounded and decimated by count. Nothing here feeds the schedule (budget.py) or any rule: timing
decides nothing. Not seen: Python's garbage collector running longer over our objects, the
time torch's own code loses around our hooks (caches, allocator: measured side by side on the
MLP, it moved from -2.4 to +7.6 points with the machine's load, so no fixed charge fits it),
and the report files written after close()'s rules. The summary line says so (`MEASURES`):
the figure is what this run's own clocks can see, its interval their spread only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

# What one timed section costs outside its own timer (torch's hook dispatch, the wrapper's
# frame, two clock reads), per Budget.spend call: bench/governor_honesty.py --dispatch
# measured 1.2 us (load 1.5) and 1.5 us (load 11) on this CPU (torch 2.13), one thread.
UNTIMED_PER_CALL = 1.2e-6
# Wider than this (ratio_high - ratio_low) and the estimate is reported as noisy.
NOISY_WIDTH = 0.02
# Unsampled steps needed for a plain-step estimate.
MIN_PLAIN_STEPS = 5


class Sample:
    """A bounded sample of a series, decimated by count (never by value or time): every value
    until 2 * size are kept, then every 2nd, then every 4th..."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.values: list[float] = []
        self.stride = 1
        self.seen = 0

    def add(self, value: float) -> None:
        if self.seen % self.stride == 0:
            self.values.append(value)
            if len(self.values) >= 2 * self.size:
                self.values = self.values[::2]
                self.stride *= 2
        self.seen += 1

    def median(self) -> float:
        return _quantile(sorted(self.values), 0.5)

    def notch(self) -> float:
        """Half-width of the median's ~95% interval (the notched box plot's 1.57 IQR/sqrt n)."""
        v = sorted(self.values)
        return 1.57 * (_quantile(v, 0.75) - _quantile(v, 0.25)) / math.sqrt(len(v))


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class Governor:
    """Times each step end and estimates the side-by-side ratio (see the module docstring)."""

    def __init__(self, clock: Callable[[], float], structural_steps: int = 3) -> None:
        self._clock = clock
        self.structural_steps = structural_steps
        self._last: float | None = None  # the last step end (or attach's end)
        self.attach_s = 0.0
        self._pass_s = 0.0  # diagnosis passes in the open step
        self._pass_predicted_s = 0.0
        self.passes_s = 0.0
        self.passes_predicted_s = 0.0
        self.passes = 0
        self.close_s: float | None = None
        self._closing_at: float | None = None
        self.untimed_s = 0.0  # timed calls x UNTIMED_PER_CALL, all steps
        self.walls = 0.0  # summed walls of the steps whose wall is known
        self.unknown_walls = 0  # steps whose wall is not used (step 1)
        self.unknown_timed = 0.0  # and their timed cost
        # Per kind: steps, and the timed cost (spent + counted untimed) summed.
        self.count = {"structural": 0, "sampled": 0, "unsampled": 0, "pass": 0}
        self.timed = {"structural": 0.0, "sampled": 0.0, "unsampled": 0.0, "pass": 0.0}
        self.pass_sampled = 0  # pass steps that were also sampled
        self.plain = Sample()  # unsampled steps' wall minus their timed cost
        self.sampled_walls = Sample()
        self.structural_walls: list[float] = []  # steps 2.. of the structural steps
        self.first_timed: float | None = None  # step 1's timed cost (its wall holds setup)
        # Calls of untimed hooks (_hooks.UNTIMED_HOOK_CALLS, from attach on) and the count
        # at the last step end: each is charged UNTIMED_PER_CALL like a timed call.
        self._hook_calls: list[int] | None = None
        self._hook_calls_seen = 0
        # The process's CPU time and the wall clock from attach to the last step end: on a
        # shared machine the step walls hold waits for a CPU, which the whole-run figure
        # divides by (its per-step figures are medians, mostly free of them).
        self._cpu_wall: list[float] | None = None  # [cpu at attach, wall at attach, cpu, wall]

    def attached(self, seconds: float) -> None:
        self.attach_s += seconds
        self._last = self._clock()
        if self._cpu_wall is None:
            cpu = time.process_time()
            self._cpu_wall = [cpu, self._last, cpu, self._last]
        if self._hook_calls is None:
            from ._hooks import UNTIMED_HOOK_CALLS  # torch's: imported once attached

            self._hook_calls = UNTIMED_HOOK_CALLS
            self._hook_calls_seen = UNTIMED_HOOK_CALLS[0]

    def passed(self, seconds: float, predicted: float = 0.0) -> None:
        """A mid-run diagnosis pass took `seconds` in the open step."""
        self._pass_s += seconds
        self._pass_predicted_s += predicted

    def closing(self) -> None:
        self._closing_at = self._clock()

    def closed(self) -> float | None:
        """close()'s time from closing() until now (its rules ran; the files are not written)."""
        if self._closing_at is not None and self.close_s is None:
            self.close_s = self._clock() - self._closing_at
        return self.close_s

    def step_end(self, step: int, sampled: bool, spent: float, calls: int) -> None:
        now = self._clock()
        # Step 1's wall also holds whatever the script did since attach (building a data
        # loader, its workers' start): it counts as one plain step, plus its timed cost.
        wall = None if self._last is None or step == 1 else now - self._last
        self._last = now
        if self._cpu_wall is not None:
            self._cpu_wall[2:] = time.process_time(), now
        if self._hook_calls is not None:
            seen, self._hook_calls_seen = self._hook_calls_seen, self._hook_calls[0]
            calls += self._hook_calls_seen - seen
        untimed = calls * UNTIMED_PER_CALL
        self.untimed_s += untimed
        timed = spent + untimed
        passed, self._pass_s = self._pass_s, 0.0
        predicted, self._pass_predicted_s = self._pass_predicted_s, 0.0
        if step <= self.structural_steps:
            kind = "structural"
            if step == 1 or wall is None:
                self.first_timed = (self.first_timed or 0.0) + timed
            else:
                self.structural_walls.append(wall)
        elif passed > 0:
            kind = "pass"
            self.passes += 1
            self.passes_s += passed
            self.passes_predicted_s += predicted
            self.pass_sampled += sampled
        elif sampled:
            kind = "sampled"
            if wall is not None:
                self.sampled_walls.add(wall)
        else:
            kind = "unsampled"
            if wall is not None:
                self.plain.add(wall - timed)
        self.count[kind] += 1
        self.timed[kind] += timed
        if wall is not None:
            self.walls += wall
        else:
            self.unknown_walls += 1
            self.unknown_timed += timed

    # -- the estimate ---------------------------------------------------------------------
    def _extra(self, plain: float, sampled_wall: float | None) -> float:
        """Seconds watching added to the run, for a plain step of `plain` seconds."""
        count, timed = self.count, self.timed
        every = timed["unsampled"] / count["unsampled"] if count["unsampled"] else 0.0
        per_sampled = max(sampled_wall - plain, 0.0) if sampled_wall is not None else every
        structural = self._structural(plain)
        passes = self.passes_s + self.pass_sampled * per_sampled
        passes += (self.passes - self.pass_sampled) * every
        return (
            self.attach_s
            + structural
            + count["sampled"] * per_sampled
            + timed["unsampled"]
            + passes
        )

    def _structural(self, plain: float) -> float:
        return (self.first_timed or 0.0) + sum(max(w - plain, 0.0) for w in self.structural_walls)

    def estimate(self) -> dict[str, Any]:
        """The measured ratio and its parts (empty while too few unsampled steps ran)."""
        if len(self.plain.values) < MIN_PLAIN_STEPS:
            return {}
        plain, plain_notch = self.plain.median(), self.plain.notch()
        if not plain > 0:
            return {}
        sampled = self.sampled_walls.median() if self.sampled_walls.values else None
        s_notch = self.sampled_walls.notch() if sampled is not None else 0.0

        def ratio(p: float, s: float | None) -> float:
            extra = self._extra(p, s)
            # The plain run: the steps' walls less what watching added to them, and a plain
            # step for each step whose wall is not used (step 1).
            loop_extra = extra - self.attach_s - self.unknown_timed
            base = self.walls - loop_extra + self.unknown_walls * p
            return 1.0 + extra / max(base, 1e-12)

        mid = ratio(plain, sampled)
        low = ratio(plain + plain_notch, None if sampled is None else sampled - s_notch)
        high = ratio(
            max(plain - plain_notch, 1e-12), None if sampled is None else sampled + s_notch
        )
        low, high = min(low, mid), max(high, mid)
        out: dict[str, Any] = {
            "ratio": round(mid, 4),
            "ratio_low": round(low, 4),
            "ratio_high": round(high, 4),
            "noisy": high - low > NOISY_WIDTH,
            "plain_step_s": round(plain, 7),
            "every_step_x": round(
                1 + (self.timed["unsampled"] / max(self.count["unsampled"], 1)) / plain, 4
            ),
            "sampled_step_x": round(sampled / plain, 3) if sampled is not None else None,
            "steps_by_kind": dict(self.count),
            "extra_s": round(self._extra(plain, sampled), 4),  # what watching added, attach in
            "structural_s": round(self._structural(plain), 4),
            "attach_s": round(self.attach_s, 4),
            "passes_s": round(self.passes_s, 4),
            "untimed_s": round(self.untimed_s, 4),
            "loop_cpu_share": self._cpu_share(),
        }
        return out

    def _cpu_share(self) -> float | None:
        """The process's CPU time over the wall time from attach to the last step end (all
        its threads: above 1 with several busy threads; well under 1 while it waited for a
        CPU, a device or its data)."""
        if self._cpu_wall is None:
            return None
        cpu0, wall0, cpu, wall = self._cpu_wall
        return round((cpu - cpu0) / (wall - wall0), 3) if wall > wall0 else None

    def predicted(self, plan: dict[str, float] | None) -> dict[str, Any]:
        """The cost model's figures for this run's schedule (budget.py's constants)."""
        if not plan:
            return {}
        step_s = plan["step_s"]
        sampled = self.count["sampled"] + self.pass_sampled
        steps = sum(self.count.values())
        if not step_s > 0 or not steps:
            return {}
        extra = sampled * plan["sampled_step_s"] + plan["structural_s"]
        extra += self.passes_predicted_s
        return {
            "predicted_ratio": round(1 + extra / (steps * step_s), 4),
            "predicted_step_s": round(step_s, 7),
            "predicted_sampled_step_x": round(1 + plan["sampled_step_s"] / step_s, 3),
        }


# What the measured figure holds and what it cannot, said with it: on a 2-core CPU the ratio
# measured side by side (plain and watched runs alternated, CPU time) was 2.4 points under to
# 7.6 points over this estimate on the same MLP, across machine loads (bench/ALWAYS_ON.md).
# The part our timers cannot see is time torch's own code loses around our hooks (caches,
# allocator); it is not charged, so the figure is not a side-by-side measurement.
MEASURES = (
    "from this run's step times: traindoctor's own code, its hook calls, its sampled and "
    "first steps; not the time torch's code loses around our hooks (caches) nor extra garbage "
    "collection, which a side-by-side run would also count; the whole-run figure is over the "
    "steps' wall time, waits included"
)
# Under this share of CPU time per wall second the summary names the waits (a shared machine,
# a device, data): they dilute the whole-run figure, not the per-step ones.
WAITS_SHARE = 0.5


def summary_line(overhead: dict[str, Any]) -> str | None:
    """`measured 1.040x (interval 1.02-1.06; unsampled steps 1.01x each; sampled steps 1.6x
    each, every 20 steps),
    predicted 1.03x; ...; measured from ...`: one line for the reports, None when the run was
    too short to measure. The interval is the step times' spread only (`MEASURES` says what
    the figure leaves out)."""
    ratio = overhead.get("ratio")
    if ratio is None:
        return None
    parts = [f"interval {float(overhead['ratio_low']):.2f}-{float(overhead['ratio_high']):.2f}"]
    if overhead.get("noisy"):
        parts[0] += ", noisy"
    if overhead.get("every_step_x") is not None:
        parts.append(f"unsampled steps {float(overhead['every_step_x']):.2f}x each")
    if overhead.get("sampled_step_x") is not None:
        part = f"sampled steps {float(overhead['sampled_step_x']):.2f}x each"
        if overhead.get("final_sample_interval"):
            part += f", every {overhead['final_sample_interval']} steps"
        parts.append(part)
    text = f"measured {float(ratio):.3f}x ({'; '.join(parts)})"
    if overhead.get("predicted_ratio") is not None:
        text += f", predicted {float(overhead['predicted_ratio']):.3f}x"
    if overhead.get("close_s") is not None:
        text += f"; close() {float(overhead['close_s']):.2f} s before writing the report"
    text = f"{text}; measured {MEASURES}"
    share = overhead.get("loop_cpu_share")
    if share is not None and float(share) < WAITS_SHARE:
        text += f" (the process used {float(share):.0%} of a CPU per second of the loop)"
    return text

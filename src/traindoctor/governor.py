"""What watching costs the run, measured from the run's own step times: for the report only.

Timing inside our hooks misses what happens around them (torch leaving its hook-free fast path
for a hooked module, the hook's frame, caches and allocator state our work disturbs): on the
MLP the side-by-side ratio was about twice the timed share. So the governor times every step,
wall clock from one step's end to the next, and splits the steps by kind:

- unsampled steps: their wall minus what they spent in our timed sections, minus what those
  sections cost outside their own timers (counted: `UNTIMED_PER_CALL` per timed call and per
  call of a hook that times nothing itself, `_hooks.UNTIMED_HOOK_CALLS`), is a plain step;
  the median of these is the plain-step estimate; each unsampled step costs the mean timed
  cost of the unsampled steps that did not wait (`WAIT_SHARE`: a step mostly off the CPU, on a
  shared machine, had its wait land in our timers as often as in the user's code);
- sampled steps: each costs the median sampled wall minus the plain estimate;
- structural steps: steps 2-3 likewise (their wall minus the plain estimate); step 1's wall
  also holds whatever the script did since attach, so step 1 counts as a plain step plus
  its timed cost;
- steps that ran a mid-run diagnosis pass: the pass's own time plus their kind's cost;
- attach, timed around it and around building the Doctor; close() apart (`close_s`: detach
  and the rules, before the files).

    ratio = 1 + extra / (sum of step walls - extra of the steps)

where extra adds the costs above and attach: the summed walls hold the user's own irregular
work (validation, data stalls) on both sides, as a side-by-side comparison would. Step walls
enter as medians, not means, with an interval from their notches (1.57 IQR / sqrt(n)); a wide
one is called noisy. Other timed costs are summed. Two clock reads more per step end (wall
and process CPU time), and samples
bounded and decimated by count.

The cost model's figure (`predicted()`, `predicted_ratio`) is budget.py's linear model of the
counted work for the structural and sampled steps, plus an every-step term: the entries
counted on each unsampled step (timed calls and untimed hook calls) times one entry's cost
as measured on the first `CALIBRATION_STEPS` unsampled steps that did not wait (on all of
them, waits in, when none did).

Nothing here feeds the schedule (budget.py) or any rule: timing decides nothing. Not seen:
Python's garbage collector running longer over our objects, the time torch's own code loses
around our hooks (caches, allocator: measured side by side on the MLP, it moved from -2.4 to
+7.6 points with the machine's load, so no fixed charge fits it; on a 1 ms step at load 15,
1.9x side by side against 1.3x seen), and the report files written after close()'s rules. The summary line says so (`MEASURES`):
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
# The cost model's every-step term (predicted()): our entries on an unsampled step (timed
# calls and calls of untimed hooks, counted) times what one entry cost on the first
# CALIBRATION_STEPS unsampled steps of this run, in this process (timed, plus its counted
# untimed part): measured once, then the counts carry it.
CALIBRATION_STEPS = 20
# A step whose wall is more than this share off the CPU (process CPU time against wall time)
# waited: for a CPU on a shared machine, a device, its data. A wait that falls inside one of
# our timed sections is not our cost, so the every-step cost is the mean over the unsampled
# steps that did not wait (the mean over all when too few did not: a device-bound run).
WAIT_SHARE = 0.25
# With at least this many unsampled steps that did not wait, the process runs on the CPU when
# it is not waiting for one (a shared machine): each step counts its CPU time where that is
# under its wall (`busy`), the waits for a CPU left out on both sides, as a side-by-side
# comparison in CPU time would. Fewer (a run waiting on a device or its data at every step):
# the walls.
MIN_CALM_STEPS = MIN_PLAIN_STEPS


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

    def __init__(
        self,
        clock: Callable[[], float],
        structural_steps: int = 3,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self._clock = clock
        self.cpu_clock = cpu_clock
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
        self.busy_walls = 0.0  # and of min(wall, process CPU time) of each
        self.unknown_walls = 0  # steps whose wall is not used (step 1)
        self.unknown_timed = 0.0  # and their timed cost
        # Per kind: steps, and the timed cost (spent + counted untimed) summed.
        self.count = {"structural": 0, "sampled": 0, "unsampled": 0, "pass": 0}
        self.timed = {"structural": 0.0, "sampled": 0.0, "unsampled": 0.0, "pass": 0.0}
        self.pass_sampled = 0  # pass steps that were also sampled
        # Per kind: our entries (timed calls + untimed hook calls), counted.
        self.calls = {"structural": 0, "sampled": 0, "unsampled": 0, "pass": 0}
        self.pass_unsampled_calls = 0  # entries of the pass steps that were not sampled
        # The first CALIBRATION_STEPS unsampled steps that did not wait: timed cost, entries.
        self.calibration = [0.0, 0]
        # Unsampled steps that did not wait (WAIT_SHARE): their count and timed cost.
        self.calm = [0, 0.0]
        self.plain = Sample()  # unsampled steps' wall minus their timed cost
        self.plain_calm = Sample()  # the same, of the unsampled steps that did not wait
        self.sampled_walls = Sample()
        self.sampled_busy = Sample()  # min(wall, CPU time) of the sampled steps
        self.structural_walls: list[float] = []  # steps 2.. of the structural steps
        self.structural_busy: list[float] = []
        self.first_timed: float | None = None  # step 1's timed cost (its wall holds setup)
        self.first_cpu: float | None = None  # and its process CPU time since attach
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
            cpu = self.cpu_clock()
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
        waited = True  # unknown counts as waited
        busy = wall
        cpu_step = None
        if self._cpu_wall is not None:
            cpu = self.cpu_clock()
            cpu_step = cpu - self._cpu_wall[2]
            if wall is not None:
                busy = min(wall, cpu_step)
                waited = wall - busy > WAIT_SHARE * wall
            self._cpu_wall[2:] = cpu, now
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
                if cpu_step is not None:  # our code ran on the CPU: at most its CPU time
                    self.first_cpu = (self.first_cpu or 0.0) + cpu_step
            else:
                self.structural_walls.append(wall)
                self.structural_busy.append(busy)
        elif passed > 0:
            kind = "pass"
            self.passes += 1
            self.passes_s += passed
            self.passes_predicted_s += predicted
            self.pass_sampled += sampled
            if not sampled:
                self.pass_unsampled_calls += calls
        elif sampled:
            kind = "sampled"
            if wall is not None:
                self.sampled_walls.add(wall)
                self.sampled_busy.add(busy)
        else:
            kind = "unsampled"
            if wall is not None:
                self.plain.add(wall - timed)
            if not waited:
                self.plain_calm.add(wall - timed)
                self.calm[0] += 1
                self.calm[1] += timed
                if self.calm[0] <= CALIBRATION_STEPS:
                    self.calibration[0] += timed
                    self.calibration[1] += calls
        self.count[kind] += 1
        self.timed[kind] += timed
        self.calls[kind] += calls
        if wall is not None:
            self.walls += wall
            self.busy_walls += busy
        else:
            self.unknown_walls += 1
            self.unknown_timed += timed

    # -- the estimate ---------------------------------------------------------------------
    def busy(self) -> bool:
        """Whether the figures are the steps' CPU time where under their wall (MIN_CALM_STEPS)."""
        return self.calm[0] >= MIN_CALM_STEPS

    def every_step_s(self) -> float:
        """An unsampled step's timed cost: the mean over those that did not wait (busy()),
        else over all."""
        if self.busy():
            return self.calm[1] / self.calm[0]
        n = self.count["unsampled"]
        return self.timed["unsampled"] / n if n else 0.0

    def _extra(self, plain: float, sampled_wall: float | None) -> float:
        """Seconds watching added to the run, for a plain step of `plain` seconds."""
        count = self.count
        every = self.every_step_s()
        per_sampled = max(sampled_wall - plain, 0.0) if sampled_wall is not None else every
        structural = self._structural(plain)
        passes = self.passes_s + self.pass_sampled * per_sampled
        passes += (self.passes - self.pass_sampled) * every
        return (
            self.attach_s
            + structural
            + count["sampled"] * per_sampled
            + count["unsampled"] * every
            + passes
        )

    def _first(self) -> float:
        """Step 1's cost: its timed cost; busy(), at most its CPU time since attach."""
        first = self.first_timed or 0.0
        if self.busy() and self.first_cpu is not None:
            first = min(first, self.first_cpu)
        return first

    def _structural(self, plain: float) -> float:
        walls = self.structural_busy if self.busy() else self.structural_walls
        return self._first() + sum(max(w - plain, 0.0) for w in walls)

    def estimate(self) -> dict[str, Any]:
        """The measured ratio and its parts (empty while too few unsampled steps ran)."""
        busy = self.busy()
        plains = self.plain_calm if busy else self.plain
        if len(plains.values) < MIN_PLAIN_STEPS:
            return {}
        plain, plain_notch = plains.median(), plains.notch()
        if not plain > 0:
            return {}
        sampled_walls = self.sampled_busy if busy else self.sampled_walls
        sampled = sampled_walls.median() if sampled_walls.values else None
        s_notch = sampled_walls.notch() if sampled is not None else 0.0
        walls = self.busy_walls if busy else self.walls

        def ratio(p: float, s: float | None) -> float:
            extra = self._extra(p, s)
            # The plain run: the steps' walls less what watching added to them, and a plain
            # step for each step whose wall is not used (step 1).
            unknown = self.unknown_timed - (self.first_timed or 0.0) + self._first()
            loop_extra = extra - self.attach_s - unknown
            base = walls - loop_extra + self.unknown_walls * p
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
            "every_step_x": round(1 + self.every_step_s() / plain, 4),
            "sampled_step_x": round(sampled / plain, 3) if sampled is not None else None,
            "steps_by_kind": dict(self.count),
            "extra_s": round(self._extra(plain, sampled), 4),  # what watching added, attach in
            "structural_s": round(self._structural(plain), 4),
            "attach_s": round(self.attach_s, 4),
            "passes_s": round(self.passes_s, 4),
            "untimed_s": round(self.untimed_s, 4),
            "loop_cpu_share": self._cpu_share(),
            # "cpu": each step's CPU time where under its wall (waits for a CPU left out)
            "step_clock": "cpu" if busy else "wall",
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

    def per_entry_s(self) -> float | None:
        """What one entry cost on the first unsampled steps that did not wait; without such
        steps, on all unsampled steps, waits in (None before any entry)."""
        seconds, calls = self.calibration
        if not calls:
            seconds, calls = self.timed["unsampled"], self.calls["unsampled"]
        return seconds / calls if calls else None

    def predicted(self, plan: dict[str, float] | None) -> dict[str, Any]:
        """The cost model's figures for this run's schedule: budget.py's constants for the
        structural and sampled steps and the plain step, from counted work; for every other
        step its counted entries times the per-entry cost calibrated on the first unsampled
        steps; attach as timed. Nothing here feeds the schedule."""
        if not plan:
            return {}
        step_s = plan["step_s"]
        sampled = self.count["sampled"] + self.pass_sampled
        steps = sum(self.count.values())
        if not step_s > 0 or not steps:
            return {}
        per_entry = self.per_entry_s() or 0.0
        entries = self.calls["unsampled"] + self.pass_unsampled_calls
        every_step = entries * per_entry
        extra = sampled * plan["sampled_step_s"] + plan["structural_s"]
        extra += self.passes_predicted_s + every_step + self.attach_s
        unsampled = self.count["unsampled"]
        out = {
            "predicted_ratio": round(1 + extra / (steps * step_s), 4),
            "predicted_step_s": round(step_s, 7),
            "predicted_sampled_step_x": round(1 + plan["sampled_step_s"] / step_s, 3),
            "predicted_structural_s": round(plan["structural_s"], 4),
            "predicted_extra_s": round(extra, 4),
            "entries_per_step": round(self.calls["unsampled"] / unsampled, 2)
            if unsampled
            else None,
            "per_entry_s": None if not per_entry else round(per_entry, 8),
        }
        if unsampled:
            out["predicted_every_step_s"] = round(
                self.calls["unsampled"] / unsampled * per_entry, 8
            )
        return out


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
# The whole-run figure when the steps were timed in CPU time (Governor.busy()).
BUSY = "; each step counted its CPU time where under its wall: the waits for a CPU are left out"
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
    if overhead.get("step_clock") == "cpu":
        text += BUSY
    elif share is not None and float(share) < WAITS_SHARE:
        text += f" (the process used {float(share):.0%} of a CPU per second of the loop)"
    return text

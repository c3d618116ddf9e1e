"""The sampling schedule: which steps the moderate/expensive probes measure.

The schedule is a function of the step count and of the run's counted work (probes/work.py),
never of timing: two runs of the same script sample the same steps, and give the same findings,
however loaded the machine. Before the work is counted (the structural steps) every step is
sampled; then `plan()` picks the target interval whose predicted cost stays within the budget:

    predicted cost of a sampled step / (interval * predicted step time) <= budget * SAMPLED_SHARE

The structural steps (the first three: every check, every module hooked) are counted too:
their predicted extra cost, spread over the first `HORIZON` steps, comes out of the sampled
steps' share, so the run samples that much more sparsely to pay them back; their own cap
(`STRUCTURAL_CAP` of that share) keeps a model of many small modules from being left with
almost no sampled steps:

    predicted cost of a sampled step / interval
        + min(predicted structural cost / HORIZON, STRUCTURAL_CAP * share) <= share
    where share = budget * SAMPLED_SHARE * predicted step time

The interval starts at 10 and moves toward the target: down at once, up twofold at a sampled
step at least `window` steps after the last change, so a run is sampled densely in its first
hundred steps (where most problems show) and sparsely after, whatever the target.

Both predictions are linear models of counted work (modules hooked, parameter tensors and
elements, activation elements, forward FLOPs) whose constants were measured with
bench/schedule_calibration.py. What the run costs is measured too (governor.py: step times by
kind, against an estimate of the plain step) and reported next to the model's prediction (the
run's `overhead`), so that a model miscalibrated on some machine shows; it decides nothing.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .governor import Governor


@dataclass(frozen=True)
class Work:
    """One training step's counted work (the `work.counted` signal)."""

    modules: int  # module calls in one training forward (each gets sampled-step hooks)
    tensors: int  # trainable parameter tensors (each read a few times on a sampled step)
    elements: int  # their elements
    activations: int  # elements of the module outputs of one training forward
    flops: float  # estimated floating-point operations of one forward
    device: str = "cpu"


# Cost model (seconds), measured by bench/schedule_calibration.py on CPU, torch 2.13; on an
# accelerator the statistics are kernel launches (per tensor) and the math is fast.
SAMPLED_BASE = 1.5e-3  # a sampled step's fixed cost (readbacks, records)
PER_MODULE = 50e-6  # activation statistics and finiteness flags, per module call
PER_TENSOR = 20e-6  # norms of params, grads and updates, per parameter tensor
PER_ELEMENT = {"cpu": 1.0e-9}  # reading one element of a param/grad/activation
PER_ELEMENT_ACCELERATOR = 1.0e-11
FLOPS_PER_SECOND = {"cpu": 4.0e10}  # the user's step: forward + backward = 3 forwards
FLOPS_PER_SECOND_ACCELERATOR = 2.0e13
LAUNCH = {"cpu": 15e-6}  # the floor of a step on small models: per module call, per pass
LAUNCH_ACCELERATOR = 1.5e-5
SAMPLED_SHARE = 0.5  # of the budget, for sampled steps; the rest is every step's own cost
# A structural step costs a sampled step and more: a fixed part (the diagnosis pass, the
# gradient walk of step 1), per module call (initial output scale, the first layer's input,
# output facts, work counting), per parameter tensor (inventory, audit, optimizer
# description) and per activation element (the output statistics of every module). Fitted to
# the side-by-side CPU time of steps 1-3 on this 2-core machine (bench/governor_honesty.py and
# bench/ALWAYS_ON.md, loads 1-18; extra over three steps: tiny MLP 21-23 ms, 1M MLP 26-102,
# small GPT 161, ResNet 415, 2,000 tensors 450-710, 10,000 tensors 2,000-2,200), where the
# constants before (0.1 ms a module, 40 us a tensor, nothing fixed nor per activation)
# predicted 11, 36, 70, 71, 820 and 4,080 ms.
STRUCTURAL_BASE = 4e-3
STRUCTURAL_PER_MODULE = 25e-6
STRUCTURAL_PER_TENSOR = 25e-6
STRUCTURAL_PER_ACTIVATION = {"cpu": 8e-9}
STRUCTURAL_PER_ACTIVATION_ACCELERATOR = 1e-10
HISTORY_WINDOWS = 50  # overhead windows kept: a long run's history stays bounded
HORIZON = 1000  # steps over which the structural steps are paid back
STRUCTURAL_CAP = 0.5  # at most this part of the sampled steps' share pays for them


def predicted_sampled_seconds(work: Work) -> float:
    per_element = PER_ELEMENT.get(work.device, PER_ELEMENT_ACCELERATOR)
    return (
        SAMPLED_BASE
        + PER_MODULE * work.modules
        + PER_TENSOR * work.tensors
        + per_element * (2 * work.elements + 2 * work.activations)
    )


def predicted_structural_seconds(work: Work, steps: int = 3) -> float:
    """Extra cost of the structural steps over plain steps (each is a sampled step and more)."""
    per_activation = STRUCTURAL_PER_ACTIVATION.get(
        work.device, STRUCTURAL_PER_ACTIVATION_ACCELERATOR
    )
    extra = (
        STRUCTURAL_BASE
        + STRUCTURAL_PER_MODULE * work.modules
        + STRUCTURAL_PER_TENSOR * work.tensors
        + per_activation * work.activations
    )
    return steps * (predicted_sampled_seconds(work) + extra)


def predicted_step_seconds(work: Work) -> float:
    rate = FLOPS_PER_SECOND.get(work.device, FLOPS_PER_SECOND_ACCELERATOR)
    launch = LAUNCH.get(work.device, LAUNCH_ACCELERATOR)
    return max(3.0 * work.flops / rate, 3.0 * launch * max(work.modules, 1))


class Budget:
    """The sampling schedule (see the module docstring), and the measured overhead."""

    def __init__(
        self,
        budget: float = 0.03,
        structural_steps: int = 3,
        interval: int = 10,
        min_interval: int = 5,
        max_interval: int = 1000,
        window: int = 20,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget <= 1:
            raise ValueError(
                f"budget must be a fraction in (0, 1], e.g. 0.03 for 3% (got {budget!r})"
            )
        self.budget = budget
        self.structural_steps = structural_steps
        self.interval = interval
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.window = window
        # False keeps the interval as given: the bundled scenarios sample every 10th step.
        self.adaptive = True
        self.work: Work | None = None
        self.target: int | None = None  # the planned interval
        self._changed_at = structural_steps  # the step the interval last changed at
        self.predicted: dict[str, float] | None = None  # the plan's predictions, for reports
        self._clock = clock
        self.spent_total = 0.0
        self.step_spent = 0.0
        # Public: the per-step path (steps.py, GuardedHook) adds to them directly, one frame
        # less than spend() per hook call of every step.
        self.step_calls = 0  # timed sections in the open step (what they cost untimed)
        self._last_end = clock()
        # Measures what the run costs, for the report; the schedule never reads it.
        self.governor = Governor(clock, structural_steps)
        self._reset_window()
        self.floor_share: float | None = None  # measured: every step's own cost, share of step
        # (step, measured overhead, interval) of the last windows (the report shows 50)
        self.history: deque[tuple[int, float, int]] = deque(maxlen=HISTORY_WINDOWS)
        self.extra: set[int] = set()  # steps sampled besides the schedule's (sample_steps)

    def sampled(self, step: int) -> bool:
        return step <= self.structural_steps or step % self.interval == 0 or step in self.extra

    def sample_steps(self, steps: range) -> None:
        """Sample these steps too: a later phase's first steps (zero-code found models that
        train from there on), counted in steps like the schedule."""
        self.extra.update(steps)

    def plan(self, work: Work) -> int:
        """Decide the interval from the counted work (once; later calls keep the first plan)."""
        if self.work is not None:
            return self.target or self.interval
        self.work = work
        sampled = predicted_sampled_seconds(work)
        step = predicted_step_seconds(work)
        structural = predicted_structural_seconds(work, self.structural_steps)
        share = self.budget * SAMPLED_SHARE * step
        # The structural steps, paid back over the horizon, within their cap.
        debt = min(structural / HORIZON, STRUCTURAL_CAP * share)
        self.predicted = {
            "sampled_step_s": sampled,
            "step_s": step,
            "structural_s": structural,
            "structural_per_step_s": debt,
        }
        if self.adaptive:
            wanted = math.ceil(sampled / (share - debt) - 1e-9)
            self.target = min(self.max_interval, max(self.min_interval, wanted))
            self.interval = min(self.interval, self.target)
        return self.target or self.interval

    def every_step_affordable(self, seconds: float, share: float) -> bool:
        """Whether a check predicted to cost `seconds` fits in `share` of a predicted step
        (True until the work is counted: the first steps are checked in full)."""
        if self.work is None:
            return True
        return seconds <= share * predicted_step_seconds(self.work)

    def spend(self, seconds: float) -> None:
        self.spent_total += seconds
        self.step_spent += seconds
        self.step_calls += 1

    @property
    def spent(self) -> float:
        return self.spent_total

    def step_end(self, step: int) -> None:
        """Move the interval toward the target (by step count), and measure the overhead (for
        the report only: the schedule never reads these numbers)."""
        # As prepare_step decided it, before the interval moves.
        was_sampled = self.sampled(step)
        target = self.target
        if target is not None and step > self.structural_steps:
            if target < self.interval:
                self.interval = target
                self._changed_at = step
            elif (
                target > self.interval
                and step % self.interval == 0  # each interval is sampled at least once
                and step - self._changed_at >= self.window
            ):
                self.interval = min(target, 2 * self.interval)
                self._changed_at = step
        now = self._clock()
        wall, self._last_end = now - self._last_end, now
        spent, self.step_spent = self.step_spent, 0.0
        calls, self.step_calls = self.step_calls, 0
        self.governor.step_end(step, was_sampled, spent, calls)
        if step <= self.structural_steps:
            return
        self._wall += wall
        self._total += spent
        if not self.sampled(step):
            self._plain_spent += spent
            self._plain_n += 1
        self._n += 1
        if self._n < self.window:
            return
        user = max(self._wall - self._total, 1e-9)
        if self._plain_n:
            self.floor_share = (self._plain_spent / self._plain_n) / (user / self._n)
        self.history.append((step, self._total / user, self.interval))
        self._reset_window()

    def overhead(self) -> dict[str, Any]:
        """The measured ratio next to the cost model's prediction (keys of the `overhead`
        fact; empty parts while the run is too short to measure)."""
        return {**self.governor.estimate(), **self.governor.predicted(self.predicted)}

    def _reset_window(self) -> None:
        self._wall = 0.0
        self._total = 0.0
        self._plain_spent = 0.0
        self._plain_n = 0
        self._n = 0

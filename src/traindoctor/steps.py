"""The step boundary: what closes a training step, and the upkeep each step end does.

A step closes when the primary optimizer's step() returns, when a GradScaler's update() runs
after it skipped the step (inf/NaN gradients), or when the weights were updated by hand (no
torch optimizer; handsteps.py). The driver advances the run's clock, publishes the step's
events on the bus, and at each step end reads device values back, re-checks the structure on
the first steps and runs a mid-run diagnosis when it is due (diagnosis_schedule.py).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

import torch

from . import _hooks
from ._graph import graph_nodes
from ._mode_stack import OursPaused, UsersOff
from .budget import Work
from .bus import Event
from .compiled import CompileWatch
from .diagnosis_schedule import (
    DiagnosisSchedule,
    after_backwards,
    diagnose_due,
    predicted_pass_seconds,
)
from .errors import StopTraining
from .governor import summary_line
from .handsteps import HandSteps
from .probes.base import RunContext
from .probes.work import WORK_COUNTED
from .run_state import RunClock

READBACK_EVERY = 25
# The probes whose work is per forward pass or per backward pass of a step (module hooks,
# torch-function modes, patched losses): paused during a long stretch of backward passes
# without an optimizer step (see StepDriver.observe_backward). The per-step counts, the
# gradients and params at a step, the data and the modes stay on.
PER_PASS_PROBES = frozenset(
    f"probe {name}"
    for name in (
        "activations",
        "capture",
        "forward",
        "gradpath",
        "init",
        "loss_inputs",
        "memory",
        "numerics",
        "softmax_dims",
        "work",
    )
)
# Backward passes in one step after which those probes pause: past TD105's threshold (4 times
# the most a step has had: gradient accumulation is legitimate), and 64 before any step.
PAUSE_AFTER_MARGIN = 4
PAUSE_BEFORE_ANY_STEP = 64
PAUSE_AFTER_MIN = 8

_clock = time.perf_counter


class StepDriver:
    """Turns backward passes, optimizer steps, scaler updates and updates by hand into the
    run's step clock and bus events. Held by the Doctor; every entry is guarded by it."""

    def __init__(
        self,
        run: RunContext,
        clock: RunClock,
        diagnose: Callable[[], Any],
        describe_optimizers: Callable[[], None],
        max_steps: int | None,
        fold: Callable[[], None] | None = None,
    ) -> None:
        self.run = run
        self.clock = clock
        self.timeline = run.rec.timeline
        self.max_steps = max_steps
        self._diagnose = diagnose
        self._fold = fold
        self._describe_optimizers = describe_optimizers
        self.schedule = DiagnosisSchedule(run.budget)
        self.compile_watch = CompileWatch()
        # Updates written by hand (no torch optimizer): they close steps as step() does.
        self.hand = HandSteps(run)
        self.hand.on_step = (self.step_began, self.step_ended)
        clock.expect_hand_steps_from(lambda: self.hand.expected)
        self.primary_stepped = False
        # The watched optimizer whose step() is running, and the backward passes run inside it:
        # step(closure) evaluates its closure there, L-BFGS several times (its line search).
        # The first evaluation is the step's backward (its loss: the one step() returns, at
        # the weights the step starts from, as any other optimizer's); the others are trials
        # of the same step, counted (`optim.evaluations`), not passed to the probes.
        self.stepping: Any = None
        self.evaluations = 0
        self._skip_after = False
        # At a backward that many others preceded since the last step (NO_STEP_CHECKPOINTS):
        # the watched trained params and their gradients (object, version) before it.
        self._idle: tuple[list[torch.Tensor], list[Any], list[int]] | None = None
        # What the same backward's gradients are for (_gradient_use): the models' mode and the
        # inputs that require grad, which tell a gradient-based evaluation from a lost step.
        self._idle_use: dict[str, Any] | None = None
        self.backward_since_step = 0
        # The most backward passes one step has had (gradient accumulation's micro-batches):
        # a no-step checkpoint counts only past twice that (see after_backwards).
        self.most_backwards_per_step = 0
        self.step_backwards = 0  # backward passes in the open step (CompileWatch)
        # The last backward's loss (weakly: a freed loss's address can be reused by the next
        # step's tensors, so an address alone would date a new loss to the old step) and step.
        self.last_backward: tuple[weakref.ref[torch.Tensor] | None, int] = (None, 0)
        # close()'s rules have run: its time goes into the overhead fact (governor.py).
        run.bus.subscribe(Event.DIAGNOSIS_MADE, self._diagnosed, "governor")

    # -- backward -------------------------------------------------------------------------
    def observe_backward(self, root: torch.Tensor, loss: torch.Tensor) -> None:
        run, state = self.run, self.clock
        if state.closed or state.validating:
            return
        if self.stepping is not None:
            self.evaluations += 1
            if self.evaluations > 1:
                self._skip_after = True  # a re-evaluation of the running step's closure
                run.bus.emit(Event.EVALUATION, state._step, run.rec)
                return
        guard, budget = run.guard, run.budget
        if self.hand.armed:
            t0 = time.perf_counter()
            found = guard.call("hand steps", self.hand.before_backward)
            budget.spend(time.perf_counter() - t0)
            if found:
                self.hand_step(*found)  # the weights were updated by hand since the last one
        t0 = _clock()
        self.backward_since_step += 1
        self.step_backwards += 1
        step = state._step
        # note_backward, inline (a weakref and a tuple cannot fail: no guard call per step).
        self.last_backward = (weakref.ref(loss) if loss.numel() == 1 else None, step)
        # The handlers' own reads (10,000 `.grad`s on a many-tensor model) skip our modes (the
        # cut tracker's): a Python call each, and seen as the user's ops. The user's stay on.
        with OursPaused():
            run.bus.emit(Event.BACKWARD, step, root, loss, run.rec)
        # Budget.spend written out: this runs every step (one frame less).
        spent = _clock() - t0
        budget.spent_total += spent
        budget.step_spent += spent
        budget.step_calls += 1
        if after_backwards(self.backward_since_step, self.most_backwards_per_step):
            # Many backward passes and no step: the pass runs once this one is in, and
            # whether it fed the watched params is measured (the `idle_backward` event).
            self._idle = guard.call("idle backward", self._grads_now)
            self._idle_use = guard.call("idle backward", _gradient_use, run.attached, root)
            if self._idle is None:
                self._timed_pass()  # not measured: the pass runs now, as it did
        if self.max_steps and self.backward_since_step >= max(64, 4 * self.max_steps):
            self.timeline.event(state.step, "stopped", reason="max_steps_without_optimizer_step")
            raise StopTraining(f"{self.backward_since_step} backward passes without a step")

    def _pause(self) -> None:
        """A no-step stretch (a lost optimizer.step(), gradients of inputs after training):
        the rest of the open step is instrumented like an unsampled one, not as a sampled
        step's every pass (4-5x a small model's pass, for good). Between two passes, once
        the backward's own hooks and handlers have run (none is left half done), and not
        inside a forward holding our torch-function mode (a backward run from a module's
        forward: that mode is left at the step's end)."""
        run = self.run
        if getattr(run.attached, "quiet_mode", None) is not None:
            return
        run.guard.pause(PER_PASS_PROBES)
        self.timeline.event(
            self.clock.step, "probes_paused", backward_since_step=self.backward_since_step
        )

    def _pause_after(self) -> int:
        most = self.most_backwards_per_step
        if not most:
            return PAUSE_BEFORE_ANY_STEP
        return max(PAUSE_AFTER_MIN, PAUSE_AFTER_MARGIN * most)

    def note_backward(self, loss: torch.Tensor) -> None:
        self.last_backward = (weakref.ref(loss) if loss.numel() == 1 else None, self.clock.step)

    def after_backward(self) -> None:
        run, state = self.run, self.clock
        if state.closed or state.validating:
            return
        if self._skip_after:
            self._skip_after = False
            return
        if self._idle is not None:
            run.guard.call("idle backward", self._idle_measured)
        t0 = _clock()
        run.bus.emit(Event.AFTER_BACKWARD, state._step, run.rec)
        if self.hand.active:
            run.guard.call("hand steps", self.hand.after_backward)
        # (PAUSE_AFTER_MIN first: an int test, no call, on every ordinary step)
        since = self.backward_since_step
        if since >= PAUSE_AFTER_MIN and since >= self._pause_after() and not run.guard.paused:
            self._pause()
        budget = run.budget
        spent = _clock() - t0
        budget.spent_total += spent
        budget.step_spent += spent
        budget.step_calls += 1

    # -- what closes a step -----------------------------------------------------------------
    def hand_step(self, names: list[str], source: tuple[str, int] | None) -> None:
        """A weight update written by hand closes the open step, as optimizer.step() does
        (found at the next backward: the probes see it after the fact, see handsteps.py)."""
        run, state = self.run, self.clock
        t0 = time.perf_counter()
        self._stepped_after_backwards()
        run.bus.emit(Event.HAND_STEP, state.step, state.sampled, names, source, run.rec)
        run.budget.spend(time.perf_counter() - t0)
        self.end_step()  # times itself

    def optimizer_step(self, opt: torch.optim.Optimizer, pre: bool, primary: bool) -> None:
        """Every watched optimizer's step; the primary one's also brackets the training step
        (PRE_STEP before it, POST_STEP after it, then the step closes in end_step)."""
        run, state = self.run, self.clock
        step, sampled, rec, emit = state.step, state.sampled, run.rec, run.bus.emit
        if pre:
            # step_began, inline (twice a step)
            if self.stepping is None or self.stepping is opt:
                self.stepping, self.evaluations = opt, 0
            emit(Event.OPTIMIZER_PRE_STEP, step, sampled, opt, rec)
            if primary:
                emit(Event.PRE_STEP, step, sampled, rec)
            return
        if self.stepping is opt:
            self.step_ended(opt)
        emit(Event.OPTIMIZER_POST_STEP, step, sampled, opt, rec)
        if primary:
            self.primary_stepped = True
            self._stepped_after_backwards()
            emit(Event.POST_STEP, step, sampled, rec)

    def _stepped_after_backwards(self) -> None:
        if self.backward_since_step > self.most_backwards_per_step:
            self.most_backwards_per_step = self.backward_since_step
        self.backward_since_step = 0

    def _grads_now(self) -> tuple[list[torch.Tensor], list[Any], list[int]]:
        ctx = self.run.attached
        params = [p for _, p in ctx.named_params() if p.requires_grad] if ctx is not None else []
        grads = [p.grad for p in params]
        return params, grads, [g._version if g is not None else 0 for g in grads]

    def _idle_measured(self) -> None:
        """After a backward at a no-step checkpoint: how many watched trained params it gave a
        gradient (a later phase trains another model: none), then the diagnosis pass."""
        (params, grads, versions), self._idle = self._idle, None
        fed = sum(
            1
            for p, g, v in zip(params, grads, versions)
            if p.grad is not None and (p.grad is not g or p.grad._version != v)
        )
        self.timeline.event(
            self.clock.step,
            "idle_backward",
            backward_since_step=self.backward_since_step,
            fed=fed,
            trained=len(params),
            **(self._idle_use or {}),
        )
        self._idle_use = None
        self._timed_pass()

    def step_began(self, opt: Any) -> None:
        """A watched optimizer's step() starts (also called by the hand-step tracker's global
        hook for an optimizer not adopted yet): backward passes from here on evaluate it.
        Another optimizer's step() inside it (a wrapper's) leaves it the one; the same one
        again starts afresh (its previous step() raised before its end)."""
        if self.stepping is None or self.stepping is opt:
            self.stepping, self.evaluations = opt, 0

    def step_ended(self, opt: Any) -> None:
        if self.stepping is opt:
            if self.evaluations > 1:
                self.timeline.record(self.clock.step, "optim.evaluations", self.evaluations)
            self.stepping, self._skip_after = None, False

    def scaler_updated(self) -> None:
        if not self.clock.closed and not self.primary_stepped:
            self.end_step()  # the scaler skipped optimizer.step(): still a step boundary
        self.primary_stepped = False

    def end_step(self) -> None:
        # Runs every step: one clock read between the two timed halves, Budget.spend and
        # Guard.call written out (each a frame per step less), the same work in the same order.
        run = self.run
        budget, guard, clock = run.budget, run.guard, self.clock
        t0 = _clock()
        step = clock._step
        if guard.paused:
            guard.resume()  # the step closes: its probes record what they saw
        try:
            with UsersOff():  # the user's tensor subclasses and modes do not see our reads
                self._close_step(step)
        except Exception as exc:  # noqa: BLE001  (parts are guarded; this is the backstop)
            guard.note("step end", exc)
        if step % READBACK_EVERY == 0 or step <= budget.structural_steps:
            stream = self.timeline.stream
            if stream is not None:
                # To disk with the device values just read back: a kill loses the steps since
                # (a write to the OS every step cost ~2% of a small GPT's step here).
                run.guard.call("timeline stream", stream.flush)
            if step % READBACK_EVERY == 0:
                # Thinned after the flush: every record it drops from memory is on disk.
                run.guard.call("timeline compact", self.timeline.compact)
        t1 = _clock()
        spent = t1 - t0
        budget.spent_total += spent
        budget.step_spent += spent
        budget.step_calls += 1
        # The governor closes this step before the next one is prepared: what prepare()
        # installs for a sampled step counts as that step's cost, under the new interval.
        # The governor's own step end and the clock's advance are timed with it (the next
        # step's cost: they were the largest untimed part of an unsampled step).
        budget.step_end(step)
        clock._step += 1  # RunClock.advance
        if "step prepare" not in guard.disabled:
            try:
                self.prepare_step()
            except StopTraining:
                raise
            except Exception as exc:  # noqa: BLE001  (isolation is the point)
                guard.record("step prepare", exc)
        spent = _clock() - t1
        budget.spent_total += spent
        budget.step_spent += spent
        budget.step_calls += 1
        if self.max_steps and step >= self.max_steps:
            self.timeline.event(step, "stopped", reason="max_steps")
            raise StopTraining(f"--max-steps {self.max_steps} reached")

    def _close_step(self, step: int) -> None:
        # Each part under its own guard key: one failing part must not switch off the others.
        run, budget, guard = self.run, self.run.budget, self.run.guard
        run.bus.emit(Event.STEP_CLOSED, step, self.clock._sampled, run.rec)
        self.timeline.last_step = step
        backward_ran, self.step_backwards = self.step_backwards > 0, 0
        if budget.work is None:
            counted = self.timeline.get(step, WORK_COUNTED)
            if counted is not None:
                budget.plan(Work(**counted))
        found = None
        if "compile watch" not in guard.disabled:  # Guard.call written out (every step)
            try:
                found = self.compile_watch.step_end(backward_ran)
            except StopTraining:
                raise
            except Exception as exc:  # noqa: BLE001  (isolation is the point)
                guard.record("compile watch", exc)
        ctx = run.attached
        for prefix in found or ():
            # All of our hooks off it at once: one recompile now, none at later steps.
            if ctx is not None:
                guard.call("compile watch", _hooks.remove_our_hooks, ctx.models[prefix])
        if found:
            self.note_compiled()
        if step <= budget.structural_steps or step % READBACK_EVERY == 0:
            self.readback()
        if step <= budget.structural_steps:
            self._describe_optimizers()
        # The timeline's size (a sum over its signals) only on the steps a pass is due at.
        if diagnose_due(step, budget.structural_steps) and self.schedule.due(
            step, self.timeline.size()
        ):
            self._timed_pass()
            self.schedule.ran(step)
        elif self._fold is not None and self.schedule.fold_due(step):
            guard.call("diagnose", self._fold)
            self.schedule.folded(step)

    def _timed_pass(self) -> None:
        """A mid-run diagnosis pass, timed for the governor (which only reports it)."""
        predicted = predicted_pass_seconds(self.timeline.size())
        t0 = time.perf_counter()
        self.run.guard.call("diagnose", self._diagnose)
        self.run.budget.governor.passed(time.perf_counter() - t0, predicted)

    def _diagnosed(self, findings: Any = None) -> None:
        if not self.clock.closed:
            return
        overhead = self.timeline.facts.get("overhead")
        close_s = self.run.budget.governor.closed()
        if isinstance(overhead, dict) and close_s is not None:
            overhead["close_s"] = round(close_s, 4)
            overhead["summary"] = summary_line(overhead)
            short = self.timeline.facts.get("outcome", {}).get("overhead")
            if isinstance(short, dict):
                short.update(close_s=overhead["close_s"], summary=overhead["summary"])

    # -- upkeep -----------------------------------------------------------------------------
    def prepare_step(self) -> None:
        run = self.run
        ctx = run.attached
        if ctx is not None:
            ctx.new_step()
        # Decided once per step: the governor may change the interval before the step's
        # events, and a probe that installed hooks for a sampled step must see it sampled.
        clock, budget = self.clock, run.budget
        step = clock._step
        # Budget.sampled and RunClock.set_sampled written out (every step).
        sampled = (
            step <= budget.structural_steps or step % budget.interval == 0 or step in budget.extra
        )
        clock._sampled = sampled
        run.bus.emit(Event.STEP_OPENED, step, sampled, run.rec)

    def readback(self) -> None:
        rec, guard = self.run.rec, self.run.guard
        guard.call("readback", rec.readback)
        for exc in rec.errors:
            guard.note("readback", exc)
        rec.errors.clear()

    def note_compiled(self) -> None:
        compiled = self.compile_watch.compiled
        if compiled:
            self.timeline.facts["compiled_models"] = sorted(
                p.rstrip(".") or "<model>" for p in compiled
            )


def _gradient_use(ctx: Any, root: torch.Tensor) -> dict[str, Any]:
    """At a backward pass long after the last optimizer step (a no-step checkpoint): whether
    the watched models are in training mode, and how many leaves of the pass's graph require
    grad without being a parameter of them or of a watched optimizer (an input tensor given
    `requires_grad`: adversarial examples, saliency maps). Evaluations that use gradients
    (FGSM, saliency, a Fisher information estimate) run backward passes with no step on
    purpose; a lost `optimizer.step()` leaves the model training on its data. One walk of the
    graph, at the checkpoints only (8, 16, 32, ... backward passes without a step)."""
    if ctx is None:
        return {}
    models = list(ctx.models.values())
    params = {id(p) for m in models for p in m.parameters()} | ctx.optimizer_param_ids()
    leaves = (getattr(node, "variable", None) for node in graph_nodes(root, 100_000))
    inputs = sum(
        1
        for v in leaves
        if isinstance(v, torch.Tensor)
        and id(v) not in params
        and not isinstance(v, torch.nn.Parameter)
    )
    return {"training": any(m.training for m in models), "input_grads": inputs}

"""Gradients carried into an optimizer's step, measured over that optimizer's own cycle.

The gradient probe (grads.py) measures what is in .grad before each backward of a sampled
step: the primary optimizer's cycle, since its step() closes the step. Another optimizer's
cycle need not match the step clock: TD3's actor steps every 2nd step, and the sampled steps
10, 20, ... never hold one; a head stepped every 2nd step accumulates over two steps of the
body's optimizer. After each sampled step this probe waits for every other watched
optimizer's next step(), then watches one whole cycle of it: every backward from right after
that step to its following step(), whatever the number of steps the cycle spans. A
parameter's gradient was carried into the step when no backward of the cycle found it zeroed
(None or all zeros).

It also dates each optimizer's first step(), with the line that calls it (TD106 points at
the step() of the optimizer whose params carry their gradients).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .._source import user_source
from ..distributed.dtensor import local_all
from ..timeline import signal
from .base import Probe, Recorder, by_device

GRADS_CYCLE_CARRIED = signal(
    "grads.cycle_carried",
    "per param of a watched optimizer other than the first: the smallest ||grad|| before a "
    "backward of one whole cycle of that optimizer (from right after one step() to the next; "
    "0 when it was zeroed or None before one of them), at the step the cycle ended",
)

# A cycle longer than this many backward passes is dropped: an optimizer that steps that
# rarely is not watched for thousands of passes.
MAX_CYCLE_BACKWARDS = 256

_IDLE, _WAITING, _WATCHING = 0, 1, 2


class _Cycle:
    """One optimizer's watch: waiting for its next step(), then watching until the one after."""

    __slots__ = ("mins", "names", "params", "passes", "phase", "zeroed")

    def __init__(self) -> None:
        self.phase = _IDLE
        self.names: list[str] = []
        self.params: list[torch.Tensor] = []
        self.zeroed: set[str] = set()
        self.mins: dict[tuple[str, ...], torch.Tensor] = {}  # names on one device -> norms
        self.passes = 0


class CyclesProbe(Probe):
    name = "cycles"
    provides: ClassVar[tuple[str, ...]] = (GRADS_CYCLE_CARRIED,)
    provides_events: ClassVar[tuple[str, ...]] = ("optimizer_first_step",)

    def __init__(self) -> None:
        super().__init__()
        self._cycles: dict[int, _Cycle] = {}  # id(optimizer) -> its watch
        self._ever: set[int] = set()  # ids of the optimizers that ever stepped
        self._watching = 0  # cycles in the watching phase (the per-backward fast path)

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        if not self._watching:
            return
        for cycle in self._cycles.values():
            if cycle.phase == _WATCHING:
                self._measure(cycle)

    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        cycle = self._cycles.get(id(opt))
        if cycle is not None and cycle.phase == _WATCHING:
            self._finish(step, cycle, rec)

    def on_optimizer_post_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        key = id(opt)
        if key not in self._ever:
            self._ever.add(key)
            index = self._index(opt)
            if index is not None:  # once per optimizer: one stack walk for its step() line
                rec.event(step, "optimizer_first_step", optimizer=index, source=user_source())
        cycle = self._cycles.get(key)
        if cycle is not None and cycle.phase == _WAITING:
            self._start(cycle, opt)

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        if not sampled or self.ctx is None:
            return
        # The first optimizer's cycle is the step itself (its step() closes it): the gradient
        # probe's. Each other one: its next whole cycle, from its next step() on.
        for opt in self.ctx.optimizers[1:]:
            cycle = self._cycles.setdefault(id(opt), _Cycle())
            if cycle.phase == _IDLE:
                cycle.phase = _WAITING

    # -- one cycle --------------------------------------------------------------------------
    def _start(self, cycle: _Cycle, opt: torch.optim.Optimizer) -> None:
        """Right after the optimizer's step(): the params whose gradient it just applied."""
        assert self.ctx is not None
        held = [(n, p) for n, p in self.ctx.optimizer_params(opt) if p.grad is not None]
        if not held:
            cycle.phase = _IDLE
            return
        cycle.names = [n for n, _ in held]
        cycle.params = [p for _, p in held]
        cycle.zeroed, cycle.mins, cycle.passes = set(), {}, 0
        cycle.phase = _WATCHING
        self._watching += 1

    def _measure(self, cycle: _Cycle) -> None:
        """Before this backward's gradients are added: what .grad holds now."""
        cycle.passes += 1
        if cycle.passes > MAX_CYCLE_BACKWARDS:
            self._stop(cycle)
            return
        names, grads = [], []
        for name, p in zip(cycle.names, cycle.params):
            grad = p.grad
            if grad is None:
                cycle.zeroed.add(name)
            elif name not in cycle.zeroed:
                names.append(name)
                grads.append(_dense(grad))
        if not grads:
            return
        with torch.no_grad():
            norms = torch._foreach_norm(local_all(grads))
            for ns, ts in by_device(names, norms).values():
                key = tuple(ns)
                now = torch.stack(ts).float()
                old = cycle.mins.get(key)
                cycle.mins[key] = now if old is None else torch.minimum(old, now)

    def _finish(self, step: int, cycle: _Cycle, rec: Recorder) -> None:
        """Before the optimizer's next step(): the cycle's smallest norms, at this step."""
        if cycle.passes:
            if cycle.zeroed:
                current = rec.timeline.get(step, GRADS_CYCLE_CARRIED)
                merged = dict(current) if isinstance(current, dict) else {}
                merged.update(dict.fromkeys(sorted(cycle.zeroed), 0.0))
                rec.record(step, GRADS_CYCLE_CARRIED, merged)
            for names, norms in cycle.mins.items():
                rec.defer(step, GRADS_CYCLE_CARRIED, norms, keys=list(names), reduce=min)
        self._stop(cycle)

    def _stop(self, cycle: _Cycle) -> None:
        if cycle.phase == _WATCHING:
            self._watching -= 1
        cycle.phase = _IDLE
        cycle.names, cycle.params, cycle.zeroed, cycle.mins = [], [], set(), {}

    def _index(self, opt: torch.optim.Optimizer) -> int | None:
        ctx = self.ctx
        if ctx is None:
            return None
        return next((i for i, o in enumerate(ctx.optimizers) if o is opt), None)

    def detach(self) -> None:
        super().detach()
        self._cycles.clear()  # no param held past the run
        self._watching = 0


def _dense(grad: torch.Tensor) -> torch.Tensor:
    """A dense tensor with the norm of `grad` (sparse gradients have no norm kernel)."""
    if grad.layout is torch.strided:
        return grad
    if grad.is_sparse:
        return grad.coalesce().values()
    return grad.values()

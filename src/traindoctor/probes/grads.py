"""Gradients: which params got one, their norms, and gradients carried over from the last step."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..distributed.dtensor import local_all
from ..timeline import signal
from .base import Probe, Recorder, by_device

GRADS_NONE = signal("grads.none", "trainable params whose .grad is None when step() runs")
GRADS_CLEARED = signal(
    "grads.cleared", "params that received a gradient in backward but had none at step()"
)
GRADS_NORM = signal("grads.norm", "per param: ||grad|| when step() runs (after unscale)")
GRADS_CARRIED = signal(
    "grads.carried",
    "per param: the smallest ||grad|| already in .grad before a backward of the step "
    "(0 when it was zeroed or None before one of them)",
)
GRADS_STEPPED = signal(
    "grads.stepped", "params held by an optimizer whose step() ran in the step (sampled steps)"
)
GRADS_OBSERVED = signal("grads.observed", "1 on steps where the gradient probe looked")


class GradsProbe(Probe):
    name = "grads"
    provides: ClassVar[tuple[str, ...]] = (
        GRADS_NONE,
        GRADS_CLEARED,
        GRADS_NORM,
        GRADS_CARRIED,
        GRADS_STEPPED,
        GRADS_OBSERVED,
    )
    # Armed only by a sampled prepare(); on_step_end of that step disarms it.
    sampled_only = frozenset(
        {
            "prepare",
            "on_backward",
            "on_after_backward",
            "on_optimizer_pre_step",
            "on_pre_step",
            "on_hand_step",
            "on_step_end",
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._armed = False
        self._params: list[tuple[str, torch.Tensor]] = []  # trainable, for this sampled step
        self._received: set[str] = set()  # had a gradient after a backward of this step
        self._none: set[str] = set()  # .grad None when its optimizer stepped
        self._stepped: set[str] = set()  # held by an optimizer that stepped in this step

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._reset()
        if not sampled:
            return
        ctx = self.ctx
        assert ctx is not None
        self._armed = True
        # The walk's own (name, param) tuples: no new tuple per param (GC-tracked, 10,000 a
        # sampled step on some models).
        self._params = [np for np in ctx.named_params() if np[1].requires_grad]

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        """Before the gradients of this backward are added: what is in .grad now was left by
        earlier passes. A gradient is carried across optimizer steps only if no backward of
        the step found it zeroed, so the smallest norm over the step's passes is kept."""
        if not self._armed:
            return
        names, grads, zeroed = [], [], []
        for name, p in self._params:
            if p.grad is None:
                zeroed.append(name)
            else:
                names.append(name)
                grads.append(_strided(p.grad))  # normed under no_grad: no detach
        if zeroed:
            # One write for every None gradient (a write per param: 10,000 on some models).
            current = rec.timeline.get(step, GRADS_CARRIED)
            carried = dict(current) if isinstance(current, dict) else {}
            carried.update(dict.fromkeys(zeroed, 0.0))
            rec.record(step, GRADS_CARRIED, carried)
        if grads:
            with torch.no_grad():
                norms = torch._foreach_norm(local_all(grads))  # one fused kernel per device
            for ns, ts in by_device(names, norms).values():
                rec.defer(step, GRADS_CARRIED, torch.stack(ts).float(), keys=ns, reduce=min)

    def on_after_backward(self, step: int, rec: Recorder) -> None:
        if not self._armed:
            return
        with_grad = [np for np in self._params if np[1].grad is not None]
        self._received.update(n for n, _ in with_grad)
        ctx = self.ctx
        if ctx is not None and ctx.state.hand_steps_expected:
            # A hand-written update reads .grad after this backward (and often zeroes it
            # before the next one, where the update is seen): measure the gradient it applies
            # now. The last backward of the step overwrites: accumulated grads are applied.
            self._check(step, with_grad, rec)

    def on_hand_step(
        self,
        step: int,
        sampled: bool,
        names: list[str],
        source: tuple[str, int] | None,
        rec: Recorder,
    ) -> None:
        self._stepped.update(names)  # the params a hand-written update applied a gradient to

    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        """The gradients this optimizer is about to apply (after any GradScaler unscale)."""
        if not sampled:
            return
        assert self.ctx is not None
        params = self.ctx.optimizer_params(opt)
        self._stepped.update(n for n, _ in params)
        self._check(step, params, rec, opt)

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        if not sampled:
            return
        ctx = self.ctx
        assert ctx is not None
        rec.record(step, GRADS_OBSERVED, 1)
        # Trainable params that no optimizer holds (TD103): do they get gradients?
        held = ctx.optimizer_param_ids()
        self._check(
            step,
            [np for np in ctx.named_params() if np[1].requires_grad and id(np[1]) not in held],
            rec,
        )

    def _check(
        self,
        step: int,
        params: list[tuple[str, torch.Tensor]],
        rec: Recorder,
        opt: torch.optim.Optimizer | None = None,
    ) -> None:
        names, grads, held = [], [], []
        for name, p in params:
            if p.grad is None:
                self._none.add(name)
            else:
                names.append(name)
                grads.append(_strided(p.grad))  # normed under no_grad: no detach
                held.append(p)
        if grads:
            with torch.no_grad():
                norms = torch._foreach_norm(local_all(grads))
            if opt is not None and self.ctx is not None:
                self.ctx.share_grad_norms(opt, held, norms)  # the numerics probe reads them
            for device, (ns, ts) in by_device(names, norms).items():
                del device
                rec.defer(step, GRADS_NORM, torch.stack(ts).float(), keys=ns)

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self._armed:
            rec.record(step, GRADS_NONE, sorted(self._none))
            rec.record(step, GRADS_STEPPED, sorted(self._stepped))
            cleared = sorted(self._none & self._received)
            if cleared:
                rec.record(step, GRADS_CLEARED, cleared)
        self._reset()

    def _reset(self) -> None:
        if not (self._armed or self._params or self._received or self._none or self._stepped):
            return  # nothing to clear: the common, unsampled step
        self._armed = False
        self._params = []
        self._received = set()
        self._none = set()
        self._stepped = set()


def _strided(grad: torch.Tensor) -> torch.Tensor:
    """A dense tensor with the same norm: sparse gradients (nn.Embedding(sparse=True),
    SparseAdam) have no norm kernel; the norm of their (coalesced) stored values is theirs."""
    if grad.layout is torch.strided:
        return grad
    if grad.is_sparse:
        return grad.coalesce().values()
    return grad.values()  # compressed layouts (CSR/CSC/BSR/BSC) hold each entry once

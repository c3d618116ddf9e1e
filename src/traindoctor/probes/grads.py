"""Gradients: which params got one, their norms, and gradients carried over from the last step."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..timeline import signal
from .base import Cost, Probe, Recorder

GRADS_NONE = signal("grads.none", "trainable params whose .grad is None when step() runs")
GRADS_CLEARED = signal(
    "grads.cleared", "params that received a gradient in backward but had none at step()"
)
GRADS_NORM = signal("grads.norm", "per param: ||grad|| when step() runs (after unscale)")
GRADS_CARRIED = signal(
    "grads.carried",
    "per param whose optimizer stepped: the smallest ||grad|| already in .grad before a backward "
    "of the step (0 when it was zeroed or None before one of them)",
)
GRADS_OBSERVED = signal("grads.observed", "1 on steps where the gradient probe looked")


class GradsProbe(Probe):
    name = "grads"
    provides: ClassVar[tuple[str, ...]] = (
        GRADS_NONE,
        GRADS_CLEARED,
        GRADS_NORM,
        GRADS_CARRIED,
        GRADS_OBSERVED,
    )
    cost = Cost.MODERATE

    def __init__(self) -> None:
        super().__init__()
        self._step_handles: list = []
        self._armed = False
        self._received: set[str] = set()  # got a gradient in a backward of this step
        self._zeroed: set[str] = set()  # .grad was None before one of this step's backwards
        self._carried: dict[str, torch.Tensor] = {}  # smallest ||.grad|| before a backward
        self._none: set[str] = set()  # .grad None when its optimizer stepped
        self._stepped: set[str] = set()  # held by an optimizer that stepped in this step

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        """On sampled steps, hook every trainable param for the step's backward passes."""
        self._reset()
        if not sampled:
            return
        ctx = self.ctx
        assert ctx is not None
        self._armed = True
        for name, p in ctx.named_params():
            if not p.requires_grad:
                continue
            self._step_handles.append(
                p.register_hook(ctx.hook("probe grads", self._make_pre_hook(name, p)))
            )
            self._step_handles.append(
                p.register_post_accumulate_grad_hook(
                    ctx.hook("probe grads", self._make_post_hook(name))
                )
            )

    def _make_pre_hook(self, name: str, param: torch.Tensor):
        def pre(_incoming: torch.Tensor) -> None:
            # Runs before the incoming gradient is added to param.grad: what is there now was
            # left by earlier backward passes. Gradients are carried across optimizer steps
            # only if none of the step's backward passes found .grad zeroed.
            old = param.grad
            if old is None:
                self._zeroed.add(name)
                return
            norm = torch.linalg.vector_norm(_strided(old.detach())).float()
            prev = self._carried.get(name)
            self._carried[name] = norm if prev is None else torch.minimum(prev, norm)

        return pre

    def _make_post_hook(self, name: str):
        def post(_param: torch.Tensor) -> None:
            self._received.add(name)

        return post

    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        """The gradients this optimizer is about to apply (after any GradScaler unscale)."""
        if not sampled:
            return
        ctx = self.ctx
        assert ctx is not None
        names_by_id = ctx.param_names
        params = [
            (names_by_id[id(p)], p)
            for g in opt.param_groups
            for p in g["params"]
            if id(p) in names_by_id and p.requires_grad
        ]
        self._stepped.update(n for n, _ in params)
        self._check(step, params, rec)

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        if not sampled:
            return
        ctx = self.ctx
        assert ctx is not None
        rec.record(step, GRADS_OBSERVED, 1)
        # Trainable params that no optimizer holds (TD103): do they get gradients?
        held = ctx.doctor.optimizer_param_ids()
        self._check(
            step,
            [(n, p) for n, p in ctx.named_params() if p.requires_grad and id(p) not in held],
            rec,
        )

    def _check(self, step: int, params: list[tuple[str, torch.Tensor]], rec: Recorder) -> None:
        names, grads = [], []
        for name, p in params:
            if p.grad is None:
                self._none.add(name)
            else:
                names.append(name)
                grads.append(_strided(p.grad.detach()))
        if grads:
            with torch.no_grad():
                norms = torch._foreach_norm(grads)
            for device, (ns, ts) in _by_device(names, norms).items():
                del device
                rec.defer(step, GRADS_NORM, torch.stack(ts).float(), keys=ns)

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self._armed:
            rec.record(step, GRADS_NONE, sorted(self._none))
            cleared = sorted(self._none & self._received)
            if cleared:
                rec.record(step, GRADS_CLEARED, cleared)
            judged = {n for n in self._stepped if n in self._zeroed or n in self._carried}
            carried = {}
            for name in sorted(judged):
                if name in self._zeroed:
                    rec.record(step, GRADS_CARRIED, 0.0, key=name)
                else:
                    carried[name] = self._carried[name]
            for ns, ts in _by_device(list(carried), list(carried.values())).values():
                rec.defer(step, GRADS_CARRIED, torch.stack(ts), keys=ns)
            if not judged and self._stepped:
                rec.record(step, GRADS_CARRIED, {})
        self._reset()

    def _reset(self) -> None:
        for h in self._step_handles:
            h.remove()
        self._step_handles.clear()
        self._armed = False
        self._received = set()
        self._zeroed = set()
        self._carried = {}
        self._none = set()
        self._stepped = set()

    def detach(self) -> None:
        self._reset()
        super().detach()


def _strided(grad: torch.Tensor) -> torch.Tensor:
    """A dense tensor with the same norm: sparse gradients (nn.Embedding(sparse=True),
    SparseAdam) have no norm kernel; the norm of their (coalesced) stored values is theirs."""
    if grad.layout is torch.strided:
        return grad
    if grad.is_sparse:
        return grad.coalesce().values()
    return grad.values()  # compressed layouts (CSR/CSC/BSR/BSC) hold each entry once


def _by_device(
    names: list[str], tensors: list[torch.Tensor]
) -> dict[torch.device, tuple[list[str], list[torch.Tensor]]]:
    out: dict[torch.device, tuple[list[str], list[torch.Tensor]]] = {}
    for n, t in zip(names, tensors):
        ns, ts = out.setdefault(t.device, ([], []))
        ns.append(n)
        ts.append(t)
    return out

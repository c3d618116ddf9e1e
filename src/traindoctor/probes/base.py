"""Probe contract: probes know torch, record facts and numbers, and never judge.

A probe attaches hooks (returning every handle), reacts to the Doctor's step events and
writes into the timeline through a Recorder. Device values are deferred and read back in one
batched transfer, never with one `.item()` per tensor per step.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..timeline import Timeline

if TYPE_CHECKING:
    from ..doctor import Doctor


class Cost(enum.IntEnum):
    CHEAP = 0  # every step
    MODERATE = 1  # sampled steps
    EXPENSIVE = 2  # rare samples


class Recorder:
    """Writes host values into the timeline and batches device values for one read-back."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        # (step, signal, keys or None, append, device tensor, host-side multiplier)
        self._pending: list[tuple[int, str, list[str] | None, bool, torch.Tensor, float]] = []

    def record(self, step: int, name: str, value: Any, key: str | None = None) -> None:
        self.timeline.record(step, name, value, key)

    def append(self, step: int, name: str, value: Any) -> None:
        self.timeline.append(step, name, value)

    def event(self, step: int, kind: str, **facts: Any) -> None:
        self.timeline.event(step, kind, **facts)

    def defer(
        self,
        step: int,
        name: str,
        value: torch.Tensor,
        keys: list[str] | None = None,
        append: bool = False,
        scale: float = 1.0,
    ) -> None:
        """Queue a device value (0-d, or 1-d with one key per element) for the next read-back.

        `scale` multiplies the value on the host after the read-back, which saves a device op.
        """
        self._pending.append((step, name, keys, append, value.detach(), scale))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def readback(self) -> None:
        """One device-to-host transfer per device for everything queued since the last call."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        by_device: dict[torch.device, list[int]] = {}
        for i, (*_, t, _scale) in enumerate(pending):
            by_device.setdefault(t.device, []).append(i)
        values: dict[int, list[float]] = {}
        for idx in by_device.values():
            flat = torch.cat([pending[i][4].reshape(-1).to(torch.float64) for i in idx])
            host = flat.tolist()  # the one host sync of this read-back
            pos = 0
            for i in idx:
                n = pending[i][4].numel()
                values[i] = host[pos : pos + n]
                pos += n
        for i, (step, name, keys, append, tensor, scale) in enumerate(pending):
            vals = values[i] if scale == 1.0 else [v * scale for v in values[i]]
            if keys is not None:
                for k, v in zip(keys, vals):
                    self.timeline.record(step, name, v, key=k)
            elif append:
                self.timeline.append(step, name, vals[0] if tensor.dim() == 0 else vals)
            else:
                self.timeline.record(step, name, vals[0] if tensor.dim() == 0 else vals)


@dataclass
class AttachContext:
    """What a probe may look at: the watched objects, the schedule, and a guarded hook wrapper."""

    doctor: Doctor
    models: dict[str, torch.nn.Module]
    optimizers: list[torch.optim.Optimizer]
    scaler: Any
    mode: str  # "watch" | "zero-code" | framework name
    param_names: dict[int, str] = field(default_factory=dict)  # id(tensor) -> qualified name
    _named_cache: list[tuple[str, torch.nn.Parameter]] | None = None

    def hook(self, where: str, fn: Callable[..., Any]) -> Callable[..., None]:
        """Wrap a torch hook so that it can never raise into the training and returns None."""
        guard = self.doctor.guard

        def guarded(*args: Any, **kwargs: Any) -> None:
            guard.call(where, fn, *args, **kwargs)

        return guarded

    def named_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(qualified name, param) of the watched models as they are now; walked once a step
        (walking the module tree costs ~10 µs per module) and shared by the probes."""
        if self._named_cache is None:
            self._named_cache = self._walk_params()
        return self._named_cache

    def new_step(self) -> None:
        self._named_cache = None

    def _walk_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        out: list[tuple[str, torch.nn.Parameter]] = []
        seen: set[int] = set()
        for prefix, model in self.models.items():
            for name, p in model.named_parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                out.append((f"{prefix}{name}", p))
        return out


class Probe:
    """Base probe (every event is optional). Subclasses override the events they need; all are optional."""

    name: ClassVar[str]
    provides: ClassVar[tuple[str, ...]]
    cost: ClassVar[Cost] = Cost.CHEAP

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.ctx: AttachContext | None = None

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        self.ctx = ctx

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        """`root` is the tensor backward ran on; `loss` the same with any GradScaler scale removed."""

    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        """Before any watched optimizer's step() (GANs and multi-optimizer setups step several)."""

    def on_optimizer_post_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        """After any watched optimizer's step()."""

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        """Before the primary optimizer's step() applies the gradients."""

    def on_post_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        """After the primary optimizer's step()."""

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        """The step boundary: the step is closed (also when a GradScaler skipped the step)."""

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        """Called when step `step` opens; install per-step hooks here for sampled steps."""

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

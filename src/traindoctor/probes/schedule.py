"""The schedule of a step: LR schedulers, autocast precision, micro-batches and clipping.

Facts the optimizer probe cannot see from the optimizer alone:

- which LR schedulers drive a watched optimizer (class and settings: `step_size`, `T_max`,
  milestones, ...) and how many times their `step()` runs in each optimizer step. Schedulers
  are seen when their `step()` runs (also one built before `td.watch()`), through a
  process-wide wrapper of `LRScheduler.step` (and of the subclasses that override it),
  installed with the first listener and restored exactly with the last;
- the autocast dtype in force when a watched model's forward starts;
- under float16 autocast without an enabled GradScaler, the number of non-zero gradient
  elements per parameter at `step()` (one fused L0 `_foreach_norm`, sampled steps);
- for a `ReduceLROnPlateau`, the value each `step(metric)` was given (a Python float) and the
  lr of its optimizer's first param group before and after that step (its cuts);
- `clip_grad_norm_`'s max_norm and the total norm it measured (through the clip patches of
  `_patches.py`);
- backward passes whose loss ends in a division by a tensor (a data-dependent normalizer, e.g.
  `loss_sum / n_tokens`), which the constant-factor walk of the loss probe cannot see.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from .. import _patches
from .._hooks import CopySafeHook
from .._patching import Patch, PatchSet, acquire, release
from .._source import call_site, relpath
from .._warnings import call_as_caller
from ..distributed.dtensor import local_all
from ..timeline import signal
from .base import AttachContext, Probe, Recorder, by_device

SCHED_STEPS = signal(
    "schedule.steps",
    "per scheduler ('sched0', see the lr_scheduler events): scheduler.step() calls in the step",
)
SCHED_PLATEAU = signal(
    "schedule.plateau",
    "per ReduceLROnPlateau ('sched0'): [metric given to step(), lr before, lr after] "
    "(first param group)",
)
SCHED_AUTOCAST = signal(
    "schedule.autocast",
    "per device type: the autocast dtype in force at a watched model's forward ('off' if none)",
)
SCHED_GRAD_NONZERO = signal(
    "schedule.grad_nonzero",
    "per param: non-zero gradient elements at step() (float16 autocast without a GradScaler)",
)
SCHED_CLIP_NORM = signal(
    "schedule.clip_norm", "per step: list of total norms clip_grad_norm_ measured before clipping"
)
SCHED_CLIP_MAX = signal("schedule.clip_max", "per step: list of clip_grad_norm_'s max_norm")
SCHED_TENSOR_DIV = signal(
    "schedule.tensor_divided",
    "per step: backward passes whose loss ends in a division by a tensor (data normalizer)",
)

# Scheduler attributes that say how long its schedule is; copied into the lr_scheduler event.
_SETTINGS = (
    "step_size",
    "gamma",
    "milestones",
    "T_max",
    "eta_min",
    "T_0",
    "T_mult",
    "total_steps",
    "total_iters",
    "factor",
    "start_factor",
    "end_factor",
    "power",
    "base_lrs",
    "patience",
    "threshold",
    "cooldown",
)
# String settings kept as they are (ReduceLROnPlateau's 'min'/'max', CyclicLR's policy).
_STR_SETTINGS = ("mode", "threshold_mode")


class ScheduleProbe(Probe):
    name = "schedule"
    provides: ClassVar[tuple[str, ...]] = (
        SCHED_STEPS,
        SCHED_PLATEAU,
        SCHED_AUTOCAST,
        SCHED_GRAD_NONZERO,
        SCHED_CLIP_NORM,
        SCHED_CLIP_MAX,
        SCHED_TENSOR_DIV,
    )
    provides_events: ClassVar[tuple[str, ...]] = (
        "lr_scheduler",
        "optimizer_hparams",
        "scheduler_epoch_arg",
    )
    sampled_only = frozenset({"on_optimizer_pre_step"})

    def __init__(self) -> None:
        super().__init__()
        self._rec: Recorder | None = None
        self._schedulers: dict[int, str] = {}  # id(scheduler) -> "sched<i>"
        self._epoch_args: set[str] = set()  # schedulers whose step(epoch) value was recorded
        # Weakrefs to the schedulers, whose callbacks drop their ids (a later one may reuse
        # the id: a zero-code sweep's trial and its scheduler are freed when the script drops
        # them; a scheduler holds its optimizer). Keys are numbered by `_count`.
        self._keep: list[Any] = []
        self._count = 0
        self._sampled = False
        self._fp16 = False  # float16 autocast seen at a forward
        self._listening = False
        self._clip = _ClipListener(self)

    # -- attaching ------------------------------------------------------------------------
    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec
        for model in ctx.models.values():
            hook = ctx.hook("probe schedule forward", self._forward)
            self.handles.append(
                model.register_forward_pre_hook(CopySafeHook(lambda m, a, h=hook: h()))
            )
        add_scheduler_listener(self._scheduler_step)
        self._hparams(rec)
        _patches.add_amp_listener(self._clip)
        self._listening = True

    def detach(self) -> None:
        if self._listening:
            remove_scheduler_listener(self._scheduler_step)
            _patches.remove_amp_listener(self._clip)
            self._listening = False
        self._keep.clear()
        super().detach()

    def _hparams(self, rec: Recorder) -> None:
        """Momentum per param group: how far weight decay pulls per step (TD514) depends on it."""
        ctx = self.ctx
        assert ctx is not None
        groups = {}
        for oi, opt in enumerate(ctx.optimizers):
            for gi, group in enumerate(opt.param_groups):
                momentum = group.get("momentum")
                groups[f"opt{oi}/group{gi}"] = {
                    "momentum": float(momentum) if isinstance(momentum, int | float) else None,
                    "dampening": _number(group.get("dampening")),
                    "decoupled": type(opt).__name__ == "AdamW"
                    or bool(group.get("decoupled_weight_decay")),
                }
        rec.event(ctx.state.step, "optimizer_hparams", groups=groups)

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._sampled = sampled

    def _live(self) -> bool:
        ctx = self.ctx
        return ctx is not None and not ctx.state.closed and not ctx.state.validating

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        ctx = self.ctx
        if ctx is None or not self._live():
            return
        key = f"probe {self.name}"
        if key in ctx.guard.disabled:
            return
        ctx.guard.call(key, fn, *args)

    # -- forward: the autocast dtype ------------------------------------------------------
    def _forward(self) -> None:
        if not self._live() or not self._sampled:
            return
        ctx, rec = self.ctx, self._rec
        assert ctx is not None and rec is not None
        step = ctx.state.step
        for device in ("cpu", "cuda"):
            # is_initialized, not is_available: that one starts the CUDA driver in a process
            # that never used CUDA (a CPU run on a GPU machine), which a fork then cannot use.
            if device == "cuda" and not torch.cuda.is_initialized():
                continue
            dtype = "off"
            if torch.is_autocast_enabled(device):
                dtype = str(torch.get_autocast_dtype(device)).replace("torch.", "")
                self._fp16 = self._fp16 or dtype == "float16"
            rec.record(step, SCHED_AUTOCAST, dtype, key=device)

    # -- backward: a data-dependent normalizer --------------------------------------------
    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        node = loss.grad_fn
        if node is None or type(node).__name__ != "DivBackward0":
            return
        other = getattr(node, "_saved_other", None)
        # A Python number is saved as a 0-d CPU tensor (the loss probe's constant factor); a
        # tensor divisor from the data (`mask.sum()`, `n_tokens`) is a normalizer.
        if isinstance(other, torch.Tensor) and (other.requires_grad or not _wrapped(other)):
            rec.record(step, SCHED_TENSOR_DIV, rec.timeline.get(step, SCHED_TENSOR_DIV, 0) + 1)

    # -- step: zero gradient elements under float16 ---------------------------------------
    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        ctx = self.ctx
        if not (sampled and self._fp16) or ctx is None:
            return
        scaler = ctx.scaler
        if scaler is not None and getattr(scaler, "is_enabled", lambda: False)():
            return
        names, grads = [], []
        for name, p in ctx.optimizer_params(opt):
            if p.grad is not None and p.grad.layout is torch.strided:
                names.append(name)
                grads.append(p.grad.detach())
        if not grads:
            return
        with torch.no_grad():
            nonzero = torch._foreach_norm(local_all(grads), 0)  # L0: non-zero count, fused
        for ns, ts in by_device(names, nonzero).values():
            rec.defer(step, SCHED_GRAD_NONZERO, torch.stack(ts).float(), keys=ns)

    # -- LR schedulers --------------------------------------------------------------------
    def _scheduler_step(
        self, sched: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], None] | None:
        ctx = self.ctx
        if ctx is not None and _is_plateau(sched) and not ctx.state.closed:
            # A plateau scheduler is often stepped inside the validation block, with the
            # validation metric: seen there too.
            key = f"probe {self.name}"
            if key in ctx.guard.disabled:
                return None
            return ctx.guard.call(key, self._on_plateau_step, sched, args, kwargs)
        self._guarded(self._on_scheduler_step, sched)
        if args or kwargs.get("epoch") is not None:
            self._guarded(self._on_epoch_arg, sched, args[0] if args else kwargs.get("epoch"))
        return None

    def _on_epoch_arg(self, sched: Any, value: Any) -> None:
        """A non-plateau scheduler's `step(x)` given a value: its (deprecated) `epoch`
        argument, from which the lr is computed in closed form. A `scheduler_epoch_arg`
        event, once per scheduler: the value and whether it is a whole number (an epoch count
        or not: `scheduler.step(loss)` passes the loss)."""
        ctx, rec = self.ctx, self._rec
        assert ctx is not None and rec is not None
        key = self._schedulers.get(id(sched))
        if key is None or key in self._epoch_args:
            return
        self._epoch_args.add(key)
        number = _as_float(value)
        whole = number is not None and math.isfinite(number) and number == int(number)
        rec.event(ctx.state.step, "scheduler_epoch_arg", key=key, value=number, whole=whole)

    def _on_plateau_step(
        self, sched: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], None] | None:
        key = self._on_scheduler_step(sched)
        ctx, rec = self.ctx, self._rec
        if key is None or ctx is None or rec is None:
            return None
        metric = _as_float(args[0] if args else kwargs.get("metrics"))
        before = _first_lr(sched)
        step = ctx.state.step

        def after() -> None:
            value = [metric, before, _first_lr(sched)]
            ctx.guard.call(f"probe {self.name}", rec.record, step, SCHED_PLATEAU, value, key)

        return after

    def _on_scheduler_step(self, sched: Any) -> str | None:
        ctx, rec = self.ctx, self._rec
        assert ctx is not None and rec is not None
        opt = getattr(sched, "optimizer", None)
        oi = next((i for i, o in enumerate(ctx.optimizers) if o is opt), None)
        # The Hugging Face Trainer builds its schedulers (linear/cosine warm-up, plateau) over
        # accelerate's AcceleratedOptimizer, which wraps the watched one as `.optimizer`.
        for _ in range(3):
            if oi is not None or opt is None:
                break
            opt = getattr(opt, "optimizer", None)
            oi = next((i for i, o in enumerate(ctx.optimizers) if o is opt), None)
        if oi is None:
            return None  # a scheduler of an optimizer traindoctor does not watch
        step = ctx.state.step
        key = self._schedulers.get(id(sched))
        if key is None:
            key = f"sched{self._count}"
            self._count += 1
            self._schedulers[id(sched)] = key
            self._keep.append(_forgetting(sched, self._schedulers))
            site = call_site()
            by_framework = _stepped_by_framework()
            rec.event(
                step,
                "lr_scheduler",
                key=key,
                cls=type(sched).__name__,
                optimizer=f"opt{oi}",
                settings=_settings(sched),
                source=f"{relpath(site[0])}:{site[1]}" if site else None,
                stepped_by_framework=by_framework,
                built=_built_at(sched, ctx.models.values()) if by_framework else None,
            )
        old = (rec.timeline.get(step, SCHED_STEPS) or {}).get(key, 0)
        rec.record(step, SCHED_STEPS, old + 1, key=key)
        return key

    # -- clipping -------------------------------------------------------------------------
    def clipped(self, fn: str, threshold: Any, result: Any) -> None:
        self._guarded(self._on_clipped, fn, threshold, result)

    def _on_clipped(self, fn: str, threshold: Any, result: Any) -> None:
        ctx, rec = self.ctx, self._rec
        assert ctx is not None and rec is not None
        if fn != "clip_grad_norm_" or not isinstance(result, torch.Tensor):
            return
        try:
            max_norm = float(threshold)
        except (TypeError, ValueError):
            return
        step = ctx.state.step
        rec.append(step, SCHED_CLIP_MAX, max_norm)
        rec.defer(step, SCHED_CLIP_NORM, result.detach().reshape(()).float(), append=True)


class _ClipListener(_patches.AmpListener):
    """The clip patches' listener, forwarding clip_after (AmpListener's other events are no-ops)."""

    def __init__(self, probe: ScheduleProbe) -> None:
        self._probe = probe

    def clip_after(self, fn: str, params: Any, threshold: Any, result: Any) -> None:
        self._probe.clipped(fn, threshold, result)


def _stepped_by_framework() -> bool:
    """Whether the first caller of step() outside torch and traindoctor is a library (Lightning
    or an installed package steps it), not the user's own line."""
    import sys

    from .._source import PKG_DIR, TORCH_DIR, is_user_file

    frame = sys._getframe(1)
    for _ in range(32):
        if frame is None:
            return False
        name = frame.f_code.co_filename
        if not os.path.abspath(name).startswith((PKG_DIR, TORCH_DIR)):
            return not is_user_file(name)
        frame = frame.f_back
    return False


def _built_at(sched: Any, models: Any) -> str | None:
    """`path:line` where a framework-stepped scheduler was built: the line of a watched
    module's own `configure_optimizers` (Lightning) that calls its class. None if not found."""
    import inspect

    from .._source import is_user_file

    needle = f"{type(sched).__name__}("
    for model in models:
        method = getattr(type(model), "configure_optimizers", None)
        code = getattr(method, "__code__", None)
        if code is None or not is_user_file(code.co_filename):
            continue
        try:
            lines, first = inspect.getsourcelines(method)
        except (OSError, TypeError):
            continue
        for i, text in enumerate(lines):
            if needle in text:
                return f"{relpath(code.co_filename)}:{first + i}"
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _wrapped(t: torch.Tensor) -> bool:
    return t.dim() == 0 and t.device.type == "cpu" and t.dtype in (torch.int64, torch.float64)


def _is_plateau(sched: Any) -> bool:
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return isinstance(sched, ReduceLROnPlateau)


def _as_float(value: Any) -> float | None:
    """The metric as a Python float (what ReduceLROnPlateau.step itself computes); never the
    tensor (a 0-d tensor is read like `float(metric)` in step())."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.detach()
    try:
        out = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return out if math.isfinite(out) else None


def _first_lr(sched: Any) -> float | None:
    groups = getattr(getattr(sched, "optimizer", None), "param_groups", None) or []
    return _number(groups[0].get("lr")) if groups else None


def _settings(sched: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in _STR_SETTINGS:
        value = sched.__dict__.get(attr)
        if isinstance(value, str):
            out[attr] = value
    for attr in _SETTINGS:
        value = sched.__dict__.get(attr)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            out[attr] = value
        elif isinstance(value, dict):  # MultiStepLR's milestones are a Counter
            out[attr] = sorted(k for k in value if isinstance(k, int))
        elif isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
            out[attr] = list(value)[:16]
    return out


# -- the process-wide LRScheduler.step wrapper ---------------------------------------------
# A listener gets (scheduler, step's args, step's kwargs) before the step runs; what it returns,
# if callable, runs after the step returned (to read what the step changed).
SchedListener = Callable[[Any, tuple[Any, ...], dict[str, Any]], Callable[[], None] | None]
_sched_listeners: list[SchedListener] = []
_depth = threading.local()


def _scheduler_classes() -> list[type]:
    from torch.optim import lr_scheduler

    base = lr_scheduler.LRScheduler
    return [
        c
        for c in vars(lr_scheduler).values()
        if isinstance(c, type) and issubclass(c, base) and "step" in vars(c)
    ]


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(_depth, "n", 0)
        afters = []
        # The step() the constructor runs (`_step_count` still 0) is not a schedule step, and
        # the inner steps of SequentialLR/ChainedScheduler belong to the outer one.
        if depth == 0 and getattr(self, "_step_count", 1) != 0 and _sched_listeners:
            for listener in list(_sched_listeners):
                try:
                    after = listener(self, args, kwargs)
                    if callable(after):
                        afters.append(after)
                except Exception:  # noqa: BLE001  (listeners guard themselves; last resort)
                    pass
        _depth.n = depth + 1
        try:
            # torch's "lr_scheduler.step() before optimizer.step()" names the user's line.
            out = call_as_caller(__file__, original, self, *args, **kwargs)
        finally:
            _depth.n = depth
        for after in afters:
            try:
                after()
            except Exception:  # noqa: BLE001  (last resort, as above)
                pass
        return out

    step.__wrapped__ = original  # type: ignore[attr-defined]
    return step


# Every scheduler class's own step() (the classes torch defines when the first doctor listens).
SCHEDULER_STEPS = PatchSet(
    "LRScheduler.step", lambda: [Patch(cls, "step", _wrap) for cls in _scheduler_classes()]
)


def add_scheduler_listener(listener: SchedListener) -> None:
    acquire(SCHEDULER_STEPS)  # one hold per listener
    _sched_listeners.append(listener)


def remove_scheduler_listener(listener: SchedListener) -> None:
    if listener in _sched_listeners:
        _sched_listeners.remove(listener)
        release(SCHEDULER_STEPS)


def _forgetting(sched: Any, keys: dict[int, str]) -> Any:
    """A weakref to `sched` that drops its id from `keys` when it is freed (the scheduler
    itself where it takes no weakref)."""
    key = id(sched)

    def forget(_: Any) -> None:
        keys.pop(key, None)

    try:
        return weakref.ref(sched, forget)
    except TypeError:
        return sched

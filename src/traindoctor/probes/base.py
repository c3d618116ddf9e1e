"""Probe contract: probes know torch, record facts and numbers, and never judge.

A probe attaches hooks (returning every handle), reacts to the Doctor's step events and
writes into the timeline through a Recorder. Device values are deferred and read back in one
batched transfer, never with one `.item()` per tensor per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .._guard import Guard
from .._hooks import COMPILE_TESTS, CopySafeHook
from .._mode_stack import TorchFunctionOff, dispatch_len, dispatch_modes_off
from ..bus import Bus, default_handler
from ..distributed.dtensor import local_all
from ..errors import StopTraining
from ..run_state import RunState
from ..timeline import Timeline
from ._named_params import NamedParams

if TYPE_CHECKING:
    from ..budget import Budget


@dataclass(slots=True)
class _Pending:
    step: int
    name: str
    tensor: torch.Tensor
    keys: list[str] | None
    append: bool
    scale: float
    reduce: Callable[[float, float], float] | None
    dropped: bool = False


class Recorder:
    """Writes host values into the timeline and batches device values for one read-back."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self._pending: list[_Pending] = []
        self.errors: list[BaseException] = []  # read-back failures, for the Doctor to report
        # The timeline's own writers, bound once: probes write several records a step, and
        # a forwarding method was one more frame each (same arguments, same behaviour).
        self.record = timeline.record  # type: ignore[method-assign]
        self.append = timeline.append  # type: ignore[method-assign]

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
        reduce: Callable[[float, float], float] | None = None,
    ) -> None:
        """Queue a device value (0-d, or 1-d with one key per element) for the next read-back.

        `scale` multiplies the value on the host after the read-back, which saves a device op;
        `reduce(old, new)` combines a keyed value with one already recorded for the step.
        """
        if value.requires_grad:
            value = value.detach()
        self._pending.append(_Pending(step, name, value, keys, append, scale, reduce))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def readback(self) -> None:
        """One device-to-host transfer per device for everything queued since the last call.

        An entry that cannot be read (an exotic tensor subclass, say) is dropped and reported
        in `errors`; the others are still recorded.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        by_device: dict[torch.device, list[_Pending]] = {}
        for entry in pending:
            by_device.setdefault(entry.tensor.device, []).append(entry)
        for entries in by_device.values():
            try:
                host = _to_host([e.tensor for e in entries])  # the one host sync per device
            except Exception as exc:  # noqa: BLE001
                self.errors.append(exc)
                host = []
                for e in entries:
                    try:
                        host.extend(_to_host([e.tensor]))
                    except Exception:  # noqa: BLE001
                        host.extend([math.nan] * e.tensor.numel())
                        e.dropped = True
            pos = 0
            for e in entries:
                n = e.tensor.numel()
                vals = host[pos : pos + n]
                pos += n
                if e.dropped:
                    continue
                self._store(e, vals if e.scale == 1.0 else [v * e.scale for v in vals])

    def _store(self, e: _Pending, vals: list[float]) -> None:
        if e.keys is not None:
            if not e.keys:
                return
            # One write of the merged dict, the same as a write per key (existing keys first,
            # then the new ones in order): per-param signals hold 10,000 keys on some models.
            current = self.timeline.get(e.step, e.name)
            merged = dict(current) if isinstance(current, dict) else {}
            if e.reduce is None:
                merged.update(zip(e.keys, vals))
            else:
                reduce = e.reduce
                for k, v in zip(e.keys, vals):
                    old = merged.get(k)
                    merged[k] = v if old is None else reduce(old, v)
            self.timeline.record(e.step, e.name, merged)
        elif e.append:
            self.timeline.append(e.step, e.name, vals[0] if e.tensor.numel() == 1 else vals)
        else:
            self.timeline.record(e.step, e.name, vals[0] if e.tensor.numel() == 1 else vals)


def _to_host(tensors: list[torch.Tensor]) -> list[float]:
    # float64 keeps float32/float64 values exact (rules compare losses bit for bit); devices
    # without float64 (Apple MPS) are read in float32 and converted on the host. Tensors are
    # grouped by dtype and rank first: one stack/cat per group instead of two ops per tensor
    # (a read-back of ~100 scalars went from ~1 ms to ~0.1 ms on CPU).
    device = tensors[0].device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    groups: dict[tuple[torch.dtype, bool], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.dim() == 0), []).append(i)
    parts: list[torch.Tensor] = []
    order: list[int] = []
    for (_, scalar), idx in groups.items():
        members = local_all([tensors[i] for i in idx])  # FSDP2: each rank's own shard
        if scalar:
            parts.append(torch.stack(members) if len(members) > 1 else members[0].reshape(1))
        else:
            parts.append(torch.cat([m.reshape(-1) for m in members]))
        order.extend(idx)
    flat = torch.cat([p.to(dtype) for p in parts]) if len(parts) > 1 else parts[0].to(dtype)
    values = flat.cpu().tolist()
    if order == sorted(order):
        return values
    # Put the values back in the callers' order (each tensor's elements stay contiguous).
    sizes = [t.numel() for t in tensors]
    chunks: dict[int, list[float]] = {}
    pos = 0
    for i in order:
        chunks[i] = values[pos : pos + sizes[i]]
        pos += sizes[i]
    return [v for i in range(len(tensors)) for v in chunks[i]]


_stack_len = torch._C._len_torch_function_stack
_stack_at = torch._C._get_function_stack_at
_pop_function_mode = torch._C._pop_torch_function_stack
_push_function_mode = torch._C._push_on_torch_function_stack


def _mode_on_top(mode: Any) -> bool:
    n = _stack_len()
    return n > 0 and _stack_at(n - 1) is mode


class GuardedHook(CopySafeHook):
    """`AttachContext.hook`'s wrapper: Guard.call's isolation written out, in one object.

    It runs per module call (tens of thousands a structural step on large models): one frame
    per call, and one tracked object per hook instead of a closure's function, cells and
    tuple (~10 objects a hook, 7 hooks a module at attach: on a 5,000-module model that was
    ~350k more objects for Python's cyclic collector to walk at every full collection)."""

    __slots__ = ("where", "ctx", "in_mode")

    def __init__(
        self, fn: Callable[..., Any], where: str, ctx: AttachContext, in_mode: bool
    ) -> None:
        super().__init__(fn)
        self.where = where
        self.ctx = ctx
        self.in_mode = in_mode

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        # _hooks.compiling() written out: one frame less in every hook call of every step.
        # Dynamo first: it would trace (and guard on) the set test below.
        if _is_compiling():
            return None  # traced: a hook that returns at once traces to nothing (_hooks.py)
        # Disabled or paused next (steps.py pauses the per-pass probes in a long stretch
        # without a step: their hooks then cost this test, not the three below).
        ctx = self.ctx
        guard = ctx.guard
        where = self.where
        if where in guard.disabled:
            return None
        if _jit_tracing() or _func_transforming() or _fx_tracing():
            return None
        # Timed from here: the mode's checks are our cost too (the governor charges what
        # stays outside, the dispatch and the tests above, per call).
        t0 = _clock()
        mode = None if self.in_mode else ctx.quiet_mode
        popped = mode is not None and _mode_on_top(mode)
        if popped:
            _pop_function_mode()
        try:
            # Unseen by the user's tensor subclasses and modes (_mode_stack.UsersOff, inline).
            with TorchFunctionOff():
                if dispatch_len():
                    with dispatch_modes_off():
                        self.fn(*args, **kwargs)
                else:
                    self.fn(*args, **kwargs)
        except StopTraining:
            raise
        except Exception as exc:  # noqa: BLE001  (isolation is the point)
            guard.record(where, exc)
        finally:
            if popped:
                _push_function_mode(mode)
        # Budget.spend written out (one frame less per hook call of every step).
        spent = _clock() - t0
        budget = ctx.budget
        budget.spent_total += spent
        budget.step_spent += spent
        budget.step_calls += 1
        return None


_clock = time.perf_counter
_is_compiling, _jit_tracing, _func_transforming, _fx_tracing = COMPILE_TESTS


@dataclass
class RunContext:
    """What everything that observes a run may use, from the Doctor's creation on: the run
    state (read-only), the guard, the overhead budget, the recorder, the event bus, and the
    watched objects once attached (`attached`, None before)."""

    state: RunState
    guard: Guard
    budget: Budget
    rec: Recorder
    bus: Bus
    # id(optimizer) -> the user's source line that built it (zero-code discovery fills it).
    created_at: dict[int, str] = field(default_factory=dict)
    attached: AttachContext | None = None


@dataclass
class AttachContext:
    """What a probe may look at: the watched objects, the run's state and services (copied
    from its RunContext: read on hot paths, one attribute away), and a guarded hook wrapper.
    There is no way back to the Doctor: probes publish on the bus and record in the timeline."""

    run: RunContext
    models: dict[str, torch.nn.Module]
    optimizers: list[torch.optim.Optimizer]
    scaler: Any
    mode: str  # "watch" | "zero-code" | framework name
    param_names: dict[int, str] = field(default_factory=dict)  # id(tensor) -> qualified name
    # Prefixes of the models that run under torch.compile (compiled.py); shared, it grows.
    compiled: set[str] = field(default_factory=set)
    _named_cache: NamedParams | None = None
    _named_check = False  # a step opened since the cache was checked
    # Bumped whenever named_params() returns a new list: equal versions, the same list.
    named_version: int = 0
    # Bumped whenever named_params() walked the models again (the module tree may have changed:
    # a module or a param replaced, added, deleted, or a model it cannot check): equal versions,
    # the same modules under the same names.
    tree_version: int = 0
    # The activations probe's TorchFunctionMode while it is entered (see hook()).
    quiet_mode: Any = None
    state: RunState = field(init=False)
    guard: Guard = field(init=False)
    budget: Budget = field(init=False)
    rec: Recorder = field(init=False)
    bus: Bus = field(init=False)

    def __post_init__(self) -> None:
        run = self.run
        self.state, self.guard, self.budget = run.state, run.guard, run.budget
        self.rec, self.bus = run.rec, run.bus

    @property
    def created_at(self) -> dict[int, str]:
        return self.run.created_at

    def optimizer_param_ids(self) -> set[int]:
        """ids of every tensor the watched optimizers hold."""
        return {id(p) for opt in self.optimizers for g in opt.param_groups for p in g["params"]}

    def hook(
        self, where: str, fn: Callable[..., Any], in_mode: bool = False
    ) -> Callable[..., None]:
        """Wrap a torch hook so that it can never raise into the training and returns None.
        Its time counts against the overhead budget, like the Doctor's own hooks.

        While the activations probe's TorchFunctionMode is the innermost one (`quiet_mode`),
        the hook runs with it popped: our own ops are neither seen as the model's activations
        nor each routed through the mode's Python handler (~5 µs a call, ~16,000 calls a
        sampled step on a 2,000-module model). `in_mode`: the activations probe's own hooks,
        which enter and leave that mode themselves."""
        return GuardedHook(fn, where, self, in_mode)

    def eager_models(self) -> dict[str, torch.nn.Module]:
        """The watched models that run eagerly: the only ones a probe may add hooks to after
        attach (a hook added to a compiled model, or removed from it, recompiles it)."""
        if not self.compiled:
            return self.models
        return {p: m for p, m in self.models.items() if p not in self.compiled}

    def named_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(qualified name, param) of the watched models as they are now, shared by the probes
        (never mutate it). Walked again only when the module tree changed: checked once a step
        (_named_params.py; the walk costs ~10 µs per module)."""
        cache = self._named_cache
        if cache is None or (self._named_check and not cache.holds(self.models)):
            previous, cache = cache, NamedParams(self.models, cache)
            self._named_cache = cache
            self.tree_version += 1
            if previous is None or cache.pairs is not previous.pairs:
                self.named_version += 1
        self._named_check = False
        return cache.pairs

    def watched_modules(self) -> list[torch.nn.Module] | None:
        """Every module of the watched models as of named_params()'s last walk (call that
        first: it checks the tree once a step), or None where the walk keeps no such list."""
        self.named_params()
        cache = self._named_cache
        return cache.modules if cache is not None else None

    def optimizer_params(self, opt: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
        """(name, param) of the watched, trainable params this optimizer holds."""
        names = self.param_names
        return [
            (names[id(p)], p)
            for group in opt.param_groups
            for p in group["params"]
            if id(p) in names and p.requires_grad
        ]

    def new_step(self) -> None:
        """The params may have changed since the last call: named_params() checks."""
        self._named_check = True

    def forget_params(self) -> None:
        """Drop the cached (name, param) walk (a closed doctor keeps no param alive)."""
        self._named_cache = None


class Probe:
    """Base probe (every event is optional). Subclasses override the events they need; all are optional."""

    name: ClassVar[str]
    provides: ClassVar[tuple[str, ...]]  # signals (schema.SIGNALS)
    # Event kinds and fact keys it writes (schema.EVENTS / FACTS): when the probe fails, the
    # rules that read one of them are not judged (diagnosis.py).
    provides_events: ClassVar[tuple[str, ...]] = ()
    provides_facts: ClassVar[tuple[str, ...]] = ()
    # Events whose handler does nothing on an unsampled step: the Doctor does not call them
    # there. Only for handlers that return at once when `sampled` is False (and whose state,
    # set on a sampled step, is consumed within that step).
    sampled_only: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.ctx: AttachContext | None = None
        # Set by a probe whose work is over (structural-steps probes): it gets no more events.
        self.retired = False

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        self.ctx = ctx

    @default_handler
    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        """`root` is the tensor backward ran on; `loss` the same with any GradScaler scale removed."""

    @default_handler
    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        """Before any watched optimizer's step() (GANs and multi-optimizer setups step several)."""

    @default_handler
    def on_optimizer_post_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        """After any watched optimizer's step()."""

    @default_handler
    def on_after_backward(self, step: int, rec: Recorder) -> None:
        """After a backward pass has accumulated its gradients."""

    @default_handler
    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        """Before the primary optimizer's step() applies the gradients."""

    @default_handler
    def on_post_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        """After the primary optimizer's step()."""

    @default_handler
    def on_hand_step(
        self,
        step: int,
        sampled: bool,
        names: list[str],
        source: tuple[str, int] | None,
        rec: Recorder,
    ) -> None:
        """The weights were updated by hand (no torch optimizer stepped): the params `names`
        were written in place since the step's last backward. Seen at the next backward (or at
        close), so the gradients may already be zeroed; `source` is the caller's (file, line)
        of a `p.data` write when there was one. The step closes right after."""

    @default_handler
    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        """The step boundary: the step is closed (also when a GradScaler skipped the step)."""

    @default_handler
    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        """Called when step `step` opens; install per-step hooks here for sampled steps."""

    @default_handler
    def on_validation(self, step: int, model: torch.nn.Module | None, rec: Recorder) -> None:
        """When `doc.validating(model)` starts (model None: the watched models)."""

    @default_handler
    def on_validation_end(self, step: int, rec: Recorder) -> None:
        """When the validation ends."""

    @default_handler
    def on_log(
        self,
        step: int,
        loss: Any,
        parts: dict[str, Any] | None,
        metrics: dict[str, Any],
        validating: bool,
        rec: Recorder,
    ) -> None:
        """`doc.log(loss, parts, **metrics)`: `step` is the step the loss belongs to."""

    @default_handler
    def on_model_output(self, facts: dict[str, Any] | None) -> None:
        """The watched model returned its training output (facts: shape, dtype, grad)."""

    @default_handler
    def on_diagnosis(self, findings: list[Any]) -> None:
        """A diagnosis pass ranked these findings (probes may schedule deeper looks)."""

    @default_handler
    def on_report_written(self, report: Any) -> None:
        """close() wrote the run directory (the probes are detached by then)."""

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def by_device(
    names: list[str], tensors: list[torch.Tensor]
) -> dict[torch.device, tuple[list[str], list[torch.Tensor]]]:
    out: dict[torch.device, tuple[list[str], list[torch.Tensor]]] = {}
    for n, t in zip(names, tensors):
        ns, ts = out.setdefault(t.device, ([], []))
        ns.append(n)
        ts.append(t)
    return out


def iter_tensors(
    obj: Any, max_depth: int = 4, max_items: int = 32, _depth: int = 0
) -> Iterator[torch.Tensor]:
    """Tensors inside a module's inputs/outputs (tensor, list, tuple, dict), bounded in depth and
    width so that a huge nested output costs little."""
    if _depth > max_depth:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, list | tuple):
        for o in obj[:max_items]:
            yield from iter_tensors(o, max_depth, max_items, _depth + 1)
    elif isinstance(obj, dict):
        for o in list(obj.values())[:max_items]:
            yield from iter_tensors(o, max_depth, max_items, _depth + 1)

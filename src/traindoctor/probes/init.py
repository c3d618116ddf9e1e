"""Initialization: the first cross-entropy losses against ln C, and the output scale of the final
layers against their input's, on the structural steps only.

Two removable instruments, both gone after the structural steps:
- `torch.nn.functional.cross_entropy` is wrapped (nn.CrossEntropyLoss calls it too) to record
  the number of classes C and the loss value; the wrapper returns torch's result untouched;
- forward hooks on the leaf modules that hold parameters record std(input) and std(output) on
  step 1 (then they go); the first backward's graph says which of them are final (the parametric ops closest to the
  loss on every path).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.nn.modules.module import register_module_forward_hook

from .._hooks import compiling
from .._mode_stack import UsersOff
from .._patching import Patch, acquire, release
from .._source import user_source
from ..timeline import signal
from ._module_hooks import ForwardHooks
from ._scaled_cosine import scaled_cosine
from .base import AttachContext, Probe, Recorder

INIT_CE_LOSS = signal("init.ce_loss", "per call index: cross_entropy value on structural steps")
INIT_CE_CLASSES = signal("init.ce_classes", "per call index: number of classes C of that call")
INIT_CE_UNIFORM = signal(
    "init.ce_uniform",
    "per call index: the cross-entropy of the same logits against a uniformly random target "
    "(mean over rows of logsumexp(z) - mean(z)), on structural steps",
)
INIT_CE_COSINE = signal(
    "init.ce_cosine",
    "per call index, step 1: the scale s of logits that are cosines times constants (the graph "
    "down to normalized operands, their norms measured; _scaled_cosine.py); absent otherwise",
)
INIT_IN_STD = signal("init.in_std", "per leaf module: std of its input on structural steps")
# Bounds on what is kept before a lazy attach (zero-code mode attaches at the first backward).
EARLY_MODULES = 10_000
EARLY_CE_CALLS = 16
INIT_OUT_STD = signal("init.out_std", "per leaf module: std of its output on structural steps")
# The module stds are measured on step 1 only: the one before any update, and the only one
# TD209 reads (after an update they describe the update, not the initialization).
STD_STEPS = 1

# -- the process-wide cross_entropy wrapper, shared by every watching doctor ----------------
_ce_listeners: list[Callable[..., None]] = []


def _ce_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _ce_wrapped(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: A002
        out = original(input, target, *args, **kwargs)
        if compiling():
            return out
        for listener in list(_ce_listeners):
            try:
                with UsersOff():  # the user's tensor subclasses and modes do not see ours
                    listener(input, out, args, kwargs)
            except Exception:  # noqa: BLE001  (listeners guard themselves; never reach the user)
                pass
        return out

    return _ce_wrapped


CROSS_ENTROPY = Patch(F, "cross_entropy", _ce_wrapper)


def _add_ce_listener(listener: Callable[..., None]) -> None:
    acquire(CROSS_ENTROPY)  # one hold per listener
    _ce_listeners.append(listener)


def _remove_ce_listener(listener: Callable[..., None]) -> None:
    if listener in _ce_listeners:
        _ce_listeners.remove(listener)
        release(CROSS_ENTROPY)


def _reduction(args: tuple, kwargs: dict[str, Any]) -> str | None:
    """The effective reduction; None for the legacy size_average/reduce arguments."""
    # cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, ...)
    size_average = args[1] if len(args) > 1 else kwargs.get("size_average")
    reduce = args[3] if len(args) > 3 else kwargs.get("reduce")
    if size_average is not None or reduce is not None:
        return None
    return args[4] if len(args) > 4 else kwargs.get("reduction", "mean")


def final_params(root: torch.Tensor, names: dict[int, str], limit: int = 20_000) -> list[str]:
    """Names of the params used by the parametric ops closest to `root` on every graph path.

    Breadth-first from the loss; a node with a watched parameter among its inputs (directly or
    through a transpose/cast/view) is a final op: its params are collected and its other inputs
    are not walked, so the layers before it are not "final".
    """
    found: list[str] = []
    seen: set[int] = set()
    frontier = deque([root.grad_fn])
    visited = 0
    while frontier and visited < limit:
        node = frontier.popleft()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        visited += 1
        params, others = [], []
        for child, _ in node.next_functions:
            if child is None:
                continue
            name = _param_leaf(child, names)
            if name is not None:
                params.append(name)
            else:
                others.append(child)
        if params:
            found.extend(p for p in params if p not in found)
        else:
            frontier.extend(others)
    return found


def _param_leaf(node: Any, names: dict[int, str], depth: int = 0) -> str | None:
    var = getattr(node, "variable", None)
    if var is not None:
        return names.get(id(var))
    if depth >= 2:
        return None
    nxt = [c for c, _ in node.next_functions if c is not None]
    if len(nxt) != 1:
        return None
    return _param_leaf(nxt[0], names, depth + 1)


def _std(t: Any) -> torch.Tensor | None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() < 2:
        return None
    return t.detach().float().std()


STACK_EVERY = 512  # 0-d stds stacked into one tensor per this many modules


class _StdRun:
    """Consecutive stds of one (step, device) key: names in order, the values stacked every
    STACK_EVERY (on a device of its own, 'meta' key, they stay 0-d and are read one by one)."""

    __slots__ = ("key", "quals", "ins", "outs", "in_stacks", "out_stacks")

    def __init__(self, key: tuple[int, torch.device]) -> None:
        self.key = key
        self.quals: list[str] = []
        self.ins: list[torch.Tensor] = []  # not yet stacked
        self.outs: list[torch.Tensor] = []
        self.in_stacks: list[torch.Tensor] = []
        self.out_stacks: list[torch.Tensor] = []

    def add(self, qual: str, s_in: torch.Tensor, s_out: torch.Tensor) -> None:
        self.quals.append(qual)
        self.ins.append(s_in)
        self.outs.append(s_out)
        if len(self.ins) >= STACK_EVERY and self.key[1].type != "meta":
            self.in_stacks.append(torch.stack(self.ins))
            self.out_stacks.append(torch.stack(self.outs))
            self.ins, self.outs = [], []

    @staticmethod
    def stacked(rest: list[torch.Tensor], stacks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The run's values as 1-d tensors, in order."""
        return [*stacks, torch.stack(rest)] if rest else list(stacks)


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class InitProbe(Probe):
    name = "init"
    provides: ClassVar[tuple[str, ...]] = (
        INIT_CE_LOSS,
        INIT_CE_CLASSES,
        INIT_CE_UNIFORM,
        INIT_CE_COSINE,
        INIT_IN_STD,
        INIT_OUT_STD,
    )
    provides_events: ClassVar[tuple[str, ...]] = (
        "cross_entropy_call",
        "final_layers",
        "cosine_logits",
    )

    def __init__(self) -> None:
        super().__init__()
        self._ce_calls = 0
        self._listening = False
        self._final_done = False
        self._seen_modules: set[str] = set()
        self._rec: Recorder | None = None
        # The stds measured this step, deferred together at its end: two read-back entries
        # per step instead of two per module. Kept as they come in runs of one (step, device)
        # key, each run stacked every STACK_EVERY modules: on a model of thousands of layers,
        # ~3 objects per module held to the step's end were promoted toward full collections.
        self._stds: list[_StdRun] = []
        self._quals: dict[int, str] = {}  # id(module) -> its name, for the shared hook
        # Before attach (zero-code mode): the first forward's measurements, and its hooks.
        self._early_handle: Any = None
        self._early_modules: dict[int, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = {}
        self._early_ce: list[tuple[Any, Any, tuple, dict, str | None]] = []

    def listen_early(self) -> None:
        """Measure the forward passes that run before `attach`: zero-code mode attaches at the
        first backward, after the first forward, which is the only one before any update.
        Global hooks keep (module, stds) and cross-entropy values until attach records them."""
        if self._early_handle is not None:
            return
        self._early_handle = register_module_forward_hook(self._early_forward)
        _add_ce_listener(self._early_cross_entropy)

    def _early_forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        try:  # a global hook: nothing may reach the user's forward
            if (
                compiling()
                or self.ctx is not None
                or not module.training
                or not torch.is_grad_enabled()
            ):
                return
            if id(module) in self._early_modules or len(self._early_modules) >= EARLY_MODULES:
                return
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                return
            x = inputs[0] if isinstance(inputs, tuple) and inputs else None
            with UsersOff():  # the user's tensor subclasses and modes do not see our reads
                s_in, s_out = _std(x), _std(output)
            if s_in is not None and s_out is not None:
                self._early_modules[id(module)] = (module, s_in, s_out)
        except Exception:  # noqa: BLE001
            pass

    def _early_cross_entropy(self, input: Any, out: Any, args: tuple, kwargs: dict) -> None:  # noqa: A002
        # Bounded: a script that never calls backward must not keep every graph alive.
        if self.ctx is None and len(self._early_ce) < EARLY_CE_CALLS:
            self._early_ce.append((input, out, args, kwargs, user_source(skip=1)))

    def _stop_early(self) -> None:
        if self._early_handle is not None:
            self._early_handle.remove()
            self._early_handle = None
            _remove_ce_listener(self._early_cross_entropy)

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec
        self._stop_early()
        _add_ce_listener(self._on_cross_entropy)
        self._listening = True
        ctx.guard.call("probe init", self._record_early, ctx)
        # One hook object for every module, the name looked up by id (a closure per module
        # was ~6 objects more for the cyclic collector to walk, on models of 10,000 modules).
        shared = ctx.hook("probe init", self._on_forward)
        self._quals: dict[int, str] = {}
        hooks = ForwardHooks()  # no handle kept per module (_module_hooks.py)
        for prefix, model in ctx.eager_models().items():
            for name, module in model.named_modules():
                if not name or not any(p.requires_grad for p in module.parameters(recurse=False)):
                    continue
                qual = f"{prefix}{name}"
                if self._quals.setdefault(id(module), qual) is qual:
                    hook = shared
                else:  # the same module object under a second model: its own name
                    hook = ctx.hook("probe init", self._make_hook(qual))
                hooks.add(module, hook)
        if len(hooks):
            self.handles.append(hooks)

    def _record_early(self, ctx: AttachContext) -> None:
        """What the early hooks saw, recorded at the open step (the first: nothing stepped)."""
        early, ces = self._early_modules, self._early_ce
        self._early_modules, self._early_ce = {}, []
        if not self._active():
            return
        names = {
            id(m): f"{prefix}{name}"
            for prefix, model in ctx.models.items()
            for name, m in model.named_modules()
            if name
        }
        step = ctx.state.step
        assert self._rec is not None
        for module, s_in, s_out in early.values():
            qual = names.get(id(module))
            if qual is not None and qual not in self._seen_modules:
                self._seen_modules.add(qual)
                self._rec.defer(step, INIT_IN_STD, s_in.reshape(1), keys=[qual])
                self._rec.defer(step, INIT_OUT_STD, s_out.reshape(1), keys=[qual])
        for input, out, args, kwargs, source in ces:  # noqa: A001
            self._record_ce(input, out, args, kwargs, source=source)

    def _active(self) -> bool:
        ctx = self.ctx
        return (
            ctx is not None
            and not ctx.state.validating
            and torch.is_grad_enabled()
            and ctx.state.step <= ctx.budget.structural_steps
        )

    def _on_forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        qual = self._quals.get(id(module))
        if qual is not None:
            self._measure(qual, inputs, output)

    def _make_hook(self, qual: str):
        def hook(_module: torch.nn.Module, inputs: Any, output: Any) -> None:
            self._measure(qual, inputs, output)

        return hook

    def _measure(self, qual: str, inputs: Any, output: Any) -> None:
        if qual in self._seen_modules or not self._active():
            return
        x = inputs[0] if isinstance(inputs, tuple) and inputs else None
        s_in, s_out = _std(x), _std(output)
        if s_in is None or s_out is None:
            return
        self._seen_modules.add(qual)
        assert self.ctx is not None
        key = (
            self.ctx.state.step,
            s_out.device if s_in.device == s_out.device else torch.device("meta"),
        )
        runs = self._stds
        if not runs or runs[-1].key != key:
            runs.append(_StdRun(key))
        runs[-1].add(qual, s_in, s_out)

    def _flush(self) -> None:
        runs, self._stds = self._stds, []
        if not runs or self._rec is None:
            return
        # Grouped by (step, device) in the order first seen, each group's rows in order.
        groups: dict[tuple[int, torch.device], list[_StdRun]] = {}
        for run in runs:
            groups.setdefault(run.key, []).append(run)
        for (step, device), group in groups.items():
            if device.type == "meta":  # input and output on different devices: one by one
                for run in group:
                    for qual, s_in, s_out in zip(run.quals, run.ins, run.outs, strict=True):
                        self._rec.defer(step, INIT_IN_STD, s_in.reshape(1), keys=[qual])
                        self._rec.defer(step, INIT_OUT_STD, s_out.reshape(1), keys=[qual])
                continue
            quals = [q for run in group for q in run.quals]
            ins = [t for run in group for t in run.stacked(run.ins, run.in_stacks)]
            outs = [t for run in group for t in run.stacked(run.outs, run.out_stacks)]
            self._rec.defer(step, INIT_IN_STD, _joined(ins), keys=quals)
            self._rec.defer(step, INIT_OUT_STD, _joined(outs), keys=quals)

    def _on_cross_entropy(self, input: Any, out: Any, args: tuple, kwargs: dict) -> None:  # noqa: A002
        if self.ctx is None or self._rec is None or not self._active():
            return
        self.ctx.guard.call("probe init", self._record_ce, input, out, args, kwargs)

    def _record_ce(
        self,
        input: Any,  # noqa: A002
        out: Any,
        args: tuple,
        kwargs: dict,
        source: str | None = None,
    ) -> None:
        if not isinstance(input, torch.Tensor) or not isinstance(out, torch.Tensor):
            return
        if out.grad_fn is None or input.dim() == 0:
            return
        reduction = _reduction(args, kwargs)
        if reduction not in ("mean", "none") or out.numel() == 0:
            return
        assert self.ctx is not None and self._rec is not None
        step = self.ctx.state.step
        classes = int(input.shape[1] if input.dim() >= 2 else input.shape[0])
        key = str(self._ce_calls)
        self._ce_calls += 1
        value = out.detach().reshape(()) if out.numel() == 1 else out.detach().float().mean()
        self._rec.defer(step, INIT_CE_LOSS, value.reshape(1), keys=[key])
        if input.dim() <= 2 and input.is_floating_point():
            # What the logits give against a target they cannot know (the expectation over a
            # uniform label): the init's own scale, apart from how the target enters the
            # logits (a margin on the target logit: ArcFace, CosFace).
            with torch.no_grad():
                z = input.detach().float()
                uniform = (torch.logsumexp(z, dim=-1) - z.mean(dim=-1)).mean()
            self._rec.defer(step, INIT_CE_UNIFORM, uniform.reshape(1), keys=[key])
        if step <= 1 and input.grad_fn is not None:
            self._record_cosine(step, key, input)
        self._rec.record(step, INIT_CE_CLASSES, classes, key=key)
        if not self._rec.timeline.events("cross_entropy_call"):
            source = source or user_source(skip=1)
            self._rec.event(step, "cross_entropy_call", classes=classes, source=source)

    def _record_cosine(self, step: int, key: str, logits: torch.Tensor) -> None:
        """Logits that are cosines times a constant (`s * cos`, CosFace, ArcFace): their loss
        at init is set by `s`, not by the init (TD209). Step 1 only: a walk of the few nodes
        above the loss, and one norm per normalized operand."""
        assert self.ctx is not None and self._rec is not None
        found = scaled_cosine(logits)
        if found is None:
            return
        scale, leaves = found
        self._rec.record(step, INIT_CE_COSINE, scale, key=key)
        if not self._rec.timeline.events("cosine_logits"):
            names = self.ctx.param_names
            params = [names[id(v)] for v in leaves if id(v) in names]
            self._rec.event(step, "cosine_logits", scale=scale, params=sorted(set(params)))

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        """The first backward: which params belong to the final layers (a graph walk, once)."""
        if self._final_done or loss.grad_fn is None:
            return
        self._final_done = True
        assert self.ctx is not None
        params = final_params(loss, self.ctx.param_names)
        modules = []
        for p in params:
            mod = p.rsplit(".", 1)[0] if "." in p else "<model>"
            if mod not in modules:
                modules.append(mod)
        rec.event(step, "final_layers", modules=modules, params=params)

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._seen_modules.clear()

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        assert self.ctx is not None
        self._flush()
        if step >= STD_STEPS and self.handles:
            # The module hooks' work is over (TD209 judges the stds of step 1 only): steps
            # 2-3 run without them; the cross-entropy listener stays to the structural end.
            for h in self.handles:
                h.remove()
            self.handles.clear()
        if step >= self.ctx.budget.structural_steps:
            self.detach()
            self.retired = True

    def detach(self) -> None:
        self._flush()  # a run closed inside a step (read back after detach)
        super().detach()
        self._stop_early()
        self._early_modules, self._early_ce = {}, []
        if self._listening:
            _remove_ce_listener(self._on_cross_entropy)
            self._listening = False

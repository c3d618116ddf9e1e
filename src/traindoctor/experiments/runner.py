"""The experiment runner: K optimizer steps on a deep copy of the model, on one captured batch.

Isolation is the point. A run builds nothing the user's run can see: a deep copy of the model
without any hook (theirs and ours), loaded with the weights captured at attach; a fresh
optimizer of the user's class over the copy's parameters, with the user's param groups'
settings; everything inside `torch.random.fork_rng` (the CPU and every CUDA device in use), so
the user's RNG streams come out as they went in. The data loader is never read: the batch was
cloned when the script fed it. Errors are the caller's to record (recipe.py catches them).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .._hooks import copy_without_hooks
from .._mode_stack import TorchFunctionOn
from ..probes.base import iter_tensors

# How much memory an experiment may need, in model sizes: the copy, its gradients, two
# optimizer state tensors per param (Adam), and the initial weights loaded into it.
MEMORY_FACTOR = 5.0
# Keep this share of the available memory free after the experiments' estimate.
MEMORY_HEADROOM = 0.5


@dataclass
class Batch:
    """One training batch as the script fed it, with the standard loss it called on the model's
    output (cloned at capture: later in-place changes by the script do not reach it)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    loss_fn: str  # name in LOSSES (loss_inputs.py); cross_entropy is torch._C._nn's entry
    loss_args: tuple[Any, ...]  # the loss's positional args after (input, target)
    loss_kwargs: dict[str, Any]
    target: torch.Tensor
    out_index: int  # which tensor of the model's output (iter_tensors order) feeds the loss
    # The loss input as a view of that output: (size, stride, storage_offset), and the output's
    # own (size, stride, storage_offset) it was read from; None: the output itself.
    view: tuple[tuple[int, ...], tuple[int, ...], int] | None
    out_layout: tuple[tuple[int, ...], tuple[int, ...], int]
    step: int
    source: str | None = None
    several_losses: bool = False
    train_mode: bool = True  # the model's mode in that forward (replayed the same)
    cast: str | None = None  # the output cast to this dtype before the loss (`.float()`)
    # The loss was computed inside forward() and returned: output tensor `out_index` is it.
    internal: bool = False
    input_shape: tuple[int, ...] | None = None  # the loss input's shape
    labels: list[int | str] = field(default_factory=list)  # model args holding the target
    # A probability op applied to the output before the loss, outside the model
    # (`F.cross_entropy(model(x).softmax(1), y)`): ("softmax" | "log_softmax" | "sigmoid", dim).
    squash: tuple[str, int | None] | None = None
    # The autocast in force at the model's forward: (device type, dtype name), replayed the
    # same; and whether the loss call itself ran under it too.
    autocast: tuple[str, str] | None = None
    loss_autocast: bool = False
    # The step's loss code, recorded from the forward's end to the backward (loss_code.py's
    # LossCode), or why it could not be (a str); `swap`: replay that code, with this op
    # swapped (the TD301/TD302 trials), instead of the one captured loss call.
    trace: Any = None
    swap: Any = None

    @property
    def input_size(self) -> tuple[int, ...]:
        if self.input_shape is not None:
            return tuple(self.input_shape)
        return tuple(self.view[0] if self.view is not None else self.out_layout[0])

    @property
    def classes(self) -> int | None:
        """Classes of a cross_entropy/nll_loss call with class-index targets, else None."""
        if self.loss_fn not in ("cross_entropy", "nll_loss"):
            return None
        size = self.input_size
        if len(size) < 1 or self.target.is_floating_point():
            return None
        return int(size[1]) if len(size) >= 2 else int(size[0])


@dataclass
class Setup:
    """What the experiments replay: the model, its weights at attach, the optimizer's class and
    groups (param indices into `model.parameters()` and their settings), and the batch."""

    model: torch.nn.Module
    init_state: dict[str, torch.Tensor] | None
    optimizer_class: type | None
    groups: list[tuple[list[int], dict[str, Any]]] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    batch: Batch | None = None
    # The batches of the first steps (batch first), for the fix trials (experiments/trials.py).
    batches: list[Batch] = field(default_factory=list)
    # Each module's `training` flag in the first captured forward (trials.py replays them).
    modes: dict[str, bool] = field(default_factory=dict)
    # The script's gradient clipping: (clip_grad_norm_ | clip_grad_value_, threshold, indices
    # into model.parameters()), seen while the batches were captured (trials.py replays it).
    clip: tuple[str, float, list[int]] | None = None
    # The most training forwards of a captured step (gradient accumulation's micro-batches).
    micro_batches: int = 1
    # The first backward's loss over the replayed call's (1/k for `loss / k`), when measured.
    loss_factor: float | None = None
    # A loss written by hand (no standard loss call captured): the first steps' batches with
    # their recorded loss code only (loss_code.py), replayed by the TD301/TD302 trials alone.
    traced: list[Batch] = field(default_factory=list)
    # The timeline keys of the groups' lr ("opt0/group1"), one per entry of `groups`.
    lr_keys: list[str] = field(default_factory=list)
    # Filled at close (experiments/fidelity.py): the lr each group had at each of the run's
    # steps from attach on, the schedulers that drove it, and the enabled GradScaler's settings.
    lrs: list[list[float]] | None = None
    schedulers: list[str] = field(default_factory=list)
    scaler: dict[str, Any] | None = None


def clone_tree(obj: Any, depth: int = 0) -> Any:
    """A copy of a call's arguments: tensors detached and cloned, containers rebuilt."""
    if isinstance(obj, torch.Tensor):
        if type(obj) is torch.Tensor or type(obj) is torch.nn.Parameter:
            return obj.detach().clone()
        # The user's tensor subclass: copied through its own `__torch_function__` (switched
        # off around our code, _mode_stack.UsersOff), so the copy keeps its class and the
        # metadata the class carries, and a replay runs the user's code on what it was given.
        with TorchFunctionOn():
            return obj.detach().clone()
    if depth > 4:
        return obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(clone_tree(o, depth + 1) for o in obj)
    if isinstance(obj, list):
        return [clone_tree(o, depth + 1) for o in obj]
    if isinstance(obj, dict):
        return {k: clone_tree(v, depth + 1) for k, v in obj.items()}
    return obj


def model_bytes(model: torch.nn.Module) -> tuple[int, set[torch.device]]:
    size, devices = 0, set()
    for t in (*model.parameters(), *model.buffers()):
        size += t.numel() * t.element_size()
        devices.add(t.device)
    return size, devices


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a copy on this device: MemAvailable of /proc/meminfo (or psutil) on CPU,
    `torch.cuda.mem_get_info` on CUDA; None when it cannot be measured."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return None


def memory_short(
    model: torch.nn.Module, factor: float = MEMORY_FACTOR, what: str = "the experiments need"
) -> str | None:
    """Why `factor` times this model's size should not be allocated now (a copy, its grads
    and optimizer state), or None when memory allows it."""
    size, devices = model_bytes(model)
    need = int(size * factor)
    for device in devices:
        free = available_memory(device)
        if free is None:
            if device.type != "cpu":
                return f"free memory on {device} cannot be measured: not copied"
            continue
        if need > free * MEMORY_HEADROOM:
            return (
                f"memory short on {device}: {what} about {need / 2**20:.0f} MiB "
                f"({factor:g}x the model's {size / 2**20:.1f} MiB), "
                f"{free / 2**20:.0f} MiB free"
            )
    return None


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy without any hook: the memo maps each hook dict to an empty one."""
    twin = copy_without_hooks(model)
    for p in twin.parameters():
        p.grad = None
    return twin


@contextlib.contextmanager
def isolated(model: torch.nn.Module, seed: int = 0) -> Iterator[None]:
    """The user's RNG streams (CPU and the CUDA devices the model lives on) forked and restored,
    grad mode on, a fixed seed inside (the same experiment gives the same curve)."""
    devices = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    with (
        torch.random.fork_rng(devices=devices),
        torch.enable_grad(),
        warnings.catch_warnings(),
        TorchFunctionOn(),  # the user's code as in their run (see _mode_stack.UsersOff)
    ):
        warnings.simplefilter("ignore")  # the user's own warnings, seen once in their run
        torch.manual_seed(seed)
        yield


def loss_function(name: str) -> Any:
    """The original loss callable (any traindoctor wrapper peeled off)."""
    import torch.nn.functional as F

    fn = torch._C._nn.cross_entropy_loss if name == "cross_entropy" else getattr(F, name)
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


class Replay:
    """The batch's forward and loss on a copy: `loss(model, args, kwargs)`."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.fn = loss_function(batch.loss_fn) if batch.loss_fn else None  # "": loss code only

    def output(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        b = self.batch
        with autocast_of(b):
            outs = list(iter_tensors(model(*args, **kwargs)))
        if b.out_index >= len(outs):
            raise RuntimeError("the copy's output has fewer tensors than the captured one")
        out = outs[b.out_index]
        layout = (tuple(out.shape), tuple(out.stride()), out.storage_offset())
        if layout != b.out_layout:
            raise RuntimeError(f"the copy's output layout {layout} is not {b.out_layout}")
        if b.cast is not None:
            # The cast of a contiguous-as-captured output: the same layout as the user's.
            out = out.to(getattr(torch, b.cast))
        if b.view is not None:
            out = out.as_strided(*b.view)
        return squashed(out, b.squash)

    def loss(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        b = self.batch
        if b.swap is not None:  # the recorded loss code, with its op swapped (loss_code.py)
            with autocast_of(b):
                outs = list(iter_tensors(model(*args, **kwargs)))
            with autocast_of(b) if b.loss_autocast else contextlib.nullcontext():
                return b.trace.after_forward(outs, model, b.swap)
        inp = self.output(model, args, kwargs)
        if b.internal:
            out = inp
        else:
            with autocast_of(b) if b.loss_autocast else contextlib.nullcontext():
                out = self.fn(inp, b.target, *b.loss_args, **b.loss_kwargs)
        return out if out.numel() == 1 else out.mean()


def autocast_of(batch: Batch) -> contextlib.AbstractContextManager[Any]:
    """The autocast the script's forward ran under (none: a no-op context)."""
    if batch.autocast is None:
        return contextlib.nullcontext()
    device, dtype = batch.autocast
    return torch.autocast(device, dtype=getattr(torch, dtype))


def squashed(out: torch.Tensor, squash: tuple[str, int | None] | None) -> torch.Tensor:
    """The output with the script's probability op applied after the model, if any."""
    if squash is None:
        return out
    op, dim = squash
    if op == "sigmoid":
        return torch.sigmoid(out)
    return getattr(torch, op)(out, dim=dim)


def base_lr(settings: dict[str, Any]) -> float | None:
    """The lr a group's schedule is built around: OneCycleLR's `max_lr`, else a scheduler's
    `initial_lr`, else the group's `lr` (as it was at attach)."""
    lr = settings.get("max_lr", settings.get("initial_lr", settings.get("lr")))
    return float(lr) if isinstance(lr, int | float | torch.Tensor) else None


def build_optimizer(setup: Setup, model: torch.nn.Module, lr_scale: float = 1.0):
    """A fresh optimizer of the user's class over the copy's params, the user's group settings
    (the base lr, `initial_lr`, where a scheduler set one), lr scaled by `lr_scale`."""
    params = list(model.parameters())
    groups = []
    for indices, settings in setup.groups:
        group = {k: v for k, v in settings.items() if k != "initial_lr"}
        lr = base_lr(settings)
        if isinstance(lr, torch.Tensor):
            lr = float(lr)
        if lr is not None:
            group["lr"] = lr * lr_scale
        group["params"] = [params[i] for i in indices if i < len(params)]
        if group["params"]:
            groups.append(group)
    if not groups or setup.optimizer_class is None:
        raise RuntimeError("no optimizer group over the model's parameters")
    defaults = {k: v for k, v in setup.defaults.items() if k != "lr"}
    try:
        return setup.optimizer_class(groups, **defaults)
    except TypeError:
        return setup.optimizer_class(groups)


@dataclass
class Curve:
    losses: list[float]
    seconds: float
    diverged: bool = False

    @property
    def best(self) -> float:
        finite = [v for v in self.losses if math.isfinite(v)]
        return min(finite) if finite else math.inf


# GradScaler constructor settings, read from the user's scaler's attributes of the same name
# (experiments/fidelity.py) and passed to a fresh one.
SCALER_SETTINGS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval")


def new_scaler(settings: dict[str, Any] | None) -> Any:
    """A fresh torch.amp.GradScaler with these settings (never the user's own), or None."""
    if settings is None:
        return None
    kwargs = {k: settings[k] for k in SCALER_SETTINGS if k in settings}
    return torch.amp.GradScaler(settings.get("device", "cuda"), **kwargs)


def fresh_copy(setup: Setup) -> torch.nn.Module:
    twin = copy_model(setup.model)
    if setup.init_state is not None:
        twin.load_state_dict(setup.init_state, strict=False)
    twin.train(setup.batch.train_mode if setup.batch is not None else True)
    return twin


def train_copy(
    setup: Setup,
    steps: int,
    lr_scale: float = 1.0,
    zero_inputs: bool = False,
    model: torch.nn.Module | None = None,
) -> Curve:
    """K optimizer steps on a fresh copy (initial weights) on the captured batch: the loss
    before each step, and the loss after the last one (steps + 1 values)."""
    assert setup.batch is not None
    t0 = time.perf_counter()
    # Called inside isolated() (the user's RNG forked): each run draws the same dropout masks,
    # so the curves of the lr grid and of the zeroed inputs start from the same loss.
    torch.manual_seed(0)
    twin = model if model is not None else fresh_copy(setup)
    replay = Replay(setup.batch)
    args, kwargs = setup.batch.args, setup.batch.kwargs
    if zero_inputs:
        args, kwargs = zeroed(args, kwargs, setup.batch.labels)
    opt = build_optimizer(setup, twin, lr_scale)
    if isinstance(opt, torch.optim.LBFGS):
        _one_iteration_per_step(opt)
    # The run's GradScaler, fresh, under float16 autocast (its gradients underflow without
    # it). Elsewhere it only skips non-finite steps: the recipe lets those show as divergence.
    fp16 = setup.batch.autocast is not None and setup.batch.autocast[1] == "float16"
    scaler = new_scaler(setup.scaler) if fp16 else None
    values: list[torch.Tensor] = []
    diverged = False
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = replay.loss(twin, args, kwargs)
        values.append(loss.detach().float().reshape(()))
        if not torch.isfinite(values[-1]):
            diverged = True
            break
        if isinstance(opt, torch.optim.LBFGS):
            opt.step(_closure(opt, replay, twin, args, kwargs))  # it raises without one
        elif scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    if not diverged:
        with torch.no_grad():
            values.append(replay.loss(twin, args, kwargs).detach().float().reshape(()))
    losses = [float(v) for v in torch.stack(values).cpu()] if values else []
    return Curve(losses=losses, seconds=time.perf_counter() - t0, diverged=diverged)


def _one_iteration_per_step(opt: torch.optim.LBFGS) -> None:
    """LBFGS's step() runs up to `max_iter` iterations (20 by default), each a forward and a
    backward: K replayed steps cost K x 20 evaluations (a float64 LSTM's recipe took minutes).
    Each replayed step is one iteration instead, so K steps cost about K evaluations, as with
    any other optimizer; LBFGS keeps its history across step() calls, so K one-iteration steps
    are one LBFGS run of K iterations. The evaluations per iteration (line search) are kept."""
    for group in opt.param_groups:
        max_iter = max(1, int(group.get("max_iter") or 1))
        max_eval = max(1, int(group.get("max_eval") or max_iter * 5 // 4))
        group["max_iter"], group["max_eval"] = 1, max(2, math.ceil(max_eval / max_iter))


def _closure(opt: Any, replay: Replay, model: torch.nn.Module, args: tuple, kwargs: dict):
    """The loss closure an optimizer that re-evaluates the loss (LBFGS) takes in step()."""

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = replay.loss(model, args, kwargs)
        loss.backward()
        return loss

    return closure


def zeroed(args: tuple, kwargs: dict, labels: list[int | str] = ()) -> tuple[tuple, dict]:
    """The model's inputs with their tensors zeroed: the positional ones, or the first keyword
    tensor when none is positional (masks and other keywords kept); never `labels` (the
    positions or names of the inputs that hold the loss's target)."""
    skip = set(labels)
    if any(isinstance(a, torch.Tensor) and i not in skip for i, a in enumerate(args)):
        return tuple(
            torch.zeros_like(a) if isinstance(a, torch.Tensor) and i not in skip else a
            for i, a in enumerate(args)
        ), kwargs
    out = dict(kwargs)
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and k not in skip:
            out[k] = torch.zeros_like(v)
            break
    return args, out

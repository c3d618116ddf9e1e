"""Data: cheap fingerprints of each training batch and the scale of what the first layer sees
(TD504 data-not-changing, TD510 inputs-not-normalized, TD513 augmentation-repeats-across-workers).

Nothing of the batch is kept: the root model's forward pre-hook, on the first training forward
of each step (grad enabled, train mode, not inside `doc.validating()`), computes on the device
a few scalars per input tensor (up to `MAX_INPUTS`): sum, sum of squares, a weighted sum with
fixed pseudo-random weights, min and max, over a strided view of at most `MAX_ELEMS` elements.
On the first `SAMPLE_STEPS` steps it also computes one weighted sum per sample of the first
batched input (per-sample fingerprints, at most `MAX_SAMPLES` samples). Everything is deferred
to the Recorder's batched read-back: no host sync per tensor or per step. The weights come from
a private `torch.Generator`, so the user's RNG streams are never drawn from.

On the structural steps only, forward hooks on the leaf modules find the first module with
parameters that runs in that forward (the first layer), the two leaf modules called after it,
and the mean/std/min/max of its input and the std of its output (deferred the same way).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..timeline import signal
from .base import AttachContext, Probe, Recorder, iter_tensors

DATA_INPUTS = signal(
    "data.inputs",
    "per input key ('in0', model prefix first): {dtype, shape, float}; recorded when it changes",
)
DATA_FP = signal(
    "data.fp",
    "per step: {'<key>.sum|sumsq|wsum|min|max': value} fingerprint of the step's first batch",
)
DATA_SAMPLES = signal(
    "data.samples",
    "per step (first SAMPLE_STEPS steps): one fingerprint per sample of the first batched input",
)
DATA_FIRST_LAYER = signal(
    "data.first_layer",
    "per structural step: {module, type, next, dtype} of the first module with params to run",
)
DATA_FIRST_STATS = signal(
    "data.first_stats",
    "per structural step: {in_mean, in_std, in_min, in_max, out_std} of the first layer",
)

MAX_INPUTS = 4  # tensors fingerprinted per forward (args then kwargs)
MAX_ELEMS = 1 << 18  # elements read per input: a strided view above this
SAMPLE_STEPS = 32  # steps with per-sample fingerprints (TD513 needs only the first batches)
MAX_SAMPLES = 64  # samples per batch fingerprinted
SAMPLE_ELEMS = 4096  # elements read per sample
FP_STATS = ("sum", "sumsq", "wsum", "min", "max")
FIRST_STATS = ("in_mean", "in_std", "in_min", "in_max", "out_std")


class DataProbe(Probe):
    name = "data"
    provides: ClassVar[tuple[str, ...]] = (
        DATA_INPUTS,
        DATA_FP,
        DATA_SAMPLES,
        DATA_FIRST_LAYER,
        DATA_FIRST_STATS,
    )

    def __init__(self) -> None:
        super().__init__()
        self._step = 1
        self._seen: set[str] = set()  # model prefixes fingerprinted in the open step
        self._inputs: dict[str, dict[str, Any]] = {}
        self._weights: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._gen = torch.Generator().manual_seed(0x7D504)  # private: no user RNG draw
        self._layer_hooks: list[Any] = []
        self._capturing = False  # inside the step's first training forward (structural steps)
        self._first: dict[str, Any] | None = None
        self._active = True  # fingerprint this step (see prepare)
        self._prev_sampled = False

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        for prefix, model in ctx.models.items():
            self.handles.append(
                model.register_forward_pre_hook(
                    ctx.hook("probe data", self._make_pre(prefix, rec)), with_kwargs=True
                )
            )
            self.handles.append(
                model.register_forward_hook(ctx.hook("probe data", self._root_done))
            )

    # -- per step -------------------------------------------------------------------------
    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._step = step
        # Every step at first, then a sampled step and the one after it (TD504 compares
        # adjacent steps): the fingerprint costs ~0.1-0.2 ms, too much for every step.
        # Whether the previous step was sampled is remembered, not recomputed: the governor may
        # have changed the interval since.
        self._active = self.ctx is None or step <= SAMPLE_STEPS or sampled or self._prev_sampled
        self._prev_sampled = sampled
        self._seen.clear()
        self._first = None
        self._capturing = False
        self._remove_layer_hooks()
        ctx = self.ctx
        if ctx is not None and step <= ctx.doctor.budget.structural_steps:
            for prefix, model in ctx.models.items():
                for name, module in model.named_modules():
                    if next(module.children(), None) is not None:
                        continue  # leaves only: the layers themselves
                    qual = f"{prefix}{name}" if name else (prefix.rstrip(".") or "<model>")
                    self._layer_hooks.append(
                        module.register_forward_hook(
                            ctx.hook("probe data", self._make_leaf(qual, rec))
                        )
                    )

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self._first is not None:
            rec.record(step, DATA_FIRST_LAYER, self._first)
            self._first = None
        self._remove_layer_hooks()

    def detach(self) -> None:
        self._remove_layer_hooks()
        super().detach()

    def _remove_layer_hooks(self) -> None:
        for h in self._layer_hooks:
            h.remove()
        self._layer_hooks.clear()

    # -- the batch --------------------------------------------------------------------------
    def _training_forward(self, module: torch.nn.Module) -> bool:
        ctx = self.ctx
        return (
            ctx is not None
            and module.training
            and torch.is_grad_enabled()
            and not ctx.doctor._validating
        )

    def _make_pre(self, prefix: str, rec: Recorder):
        def pre(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            if not self._active or prefix in self._seen or not self._training_forward(module):
                return
            self._seen.add(prefix)
            self._capturing = bool(self._layer_hooks) and len(self._seen) == 1
            self._fingerprint(prefix, (args, kwargs), rec)

        return pre

    def _root_done(self, _module: torch.nn.Module, _args: Any, _output: Any) -> None:
        self._capturing = False

    def _fingerprint(self, prefix: str, inputs: Any, rec: Recorder) -> None:
        step = self._step
        tensors = [t for t in iter_tensors(inputs) if t.numel() > 0 and not t.is_complex()]
        keys: list[str] = []
        values: list[torch.Tensor] = []
        described: dict[str, dict[str, Any]] = {}
        batched: torch.Tensor | None = None
        for i, t in enumerate(tensors[:MAX_INPUTS]):
            key = f"{prefix}in{i}"
            described[key] = {
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "float": t.is_floating_point(),
            }
            v = _strided(t.detach().reshape(-1), MAX_ELEMS).to(torch.float32)
            w = self._weight(v.numel(), v.device)
            values.append(torch.stack([v.sum(), (v * v).sum(), (v * w).sum(), v.amin(), v.amax()]))
            keys.extend(f"{key}.{s}" for s in FP_STATS)
            if batched is None and t.dim() >= 2 and t.shape[0] >= 2:
                batched = t
        if not values:
            return
        if described != {k: self._inputs.get(k) for k in described}:
            self._inputs.update(described)
            rec.record(step, DATA_INPUTS, described)
        # All of this step's values in one deferred tensor per device (usually one).
        rec.defer(step, DATA_FP, torch.cat(values), keys=keys)
        if batched is not None and step <= SAMPLE_STEPS and len(self._seen) == 1:
            x = batched.detach()[:MAX_SAMPLES].reshape(min(MAX_SAMPLES, batched.shape[0]), -1)
            stride = max(1, math.ceil(x.shape[1] / SAMPLE_ELEMS))
            xs = x[:, ::stride].to(torch.float32)
            # Row-wise multiply and sum (not a matmul): a sample's value does not depend on its
            # position in the batch, so a repeat compares bit for bit.
            rec.defer(step, DATA_SAMPLES, (xs * self._weight(xs.shape[1], xs.device)).sum(1))

    def _weight(self, n: int, device: torch.device) -> torch.Tensor:
        w = self._weights.get((n, device))
        if w is None:
            # Weights in [0.5, 1.5): a weighted sum that differs for permuted values.
            w = (torch.rand(n, generator=self._gen) + 0.5).to(device)
            if len(self._weights) > 64:
                self._weights.clear()
            self._weights[(n, device)] = w
        return w

    # -- the first layer (structural steps) ---------------------------------------------
    def _make_leaf(self, qual: str, rec: Recorder):
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if not self._capturing:
                return
            first = self._first
            if first is None:
                if next(module.parameters(recurse=False), None) is None:
                    return  # a layer without weights (a ReLU, a Flatten) comes first
                x = next(iter_tensors(inputs, max_depth=1), None)
                if x is None:
                    return
                self._first = {
                    "module": qual,
                    "type": type(module).__name__,
                    "dtype": str(x.dtype).removeprefix("torch."),
                    "next": [],
                }
                out = next(iter_tensors(output, max_depth=1), None)
                if x.is_floating_point() and x.numel() >= 2 and out is not None:
                    v = _strided(x.detach().reshape(-1), MAX_ELEMS).to(torch.float32)
                    o = _strided(out.detach().reshape(-1), MAX_ELEMS).to(torch.float32)
                    std_o = o.std() if o.numel() >= 2 else torch.zeros((), device=o.device)
                    stats = torch.stack([v.mean(), v.std(), v.amin(), v.amax(), std_o.to(v.device)])
                    rec.defer(self._step, DATA_FIRST_STATS, stats, keys=list(FIRST_STATS))
            elif len(first["next"]) < 2:
                first["next"].append(type(module).__name__)
            else:
                self._capturing = False

        return hook


def _strided(flat: torch.Tensor, limit: int) -> torch.Tensor:
    """A view of at most `limit` evenly spaced elements (no copy for a contiguous input)."""
    n = flat.numel()
    return flat if n <= limit else flat[:: math.ceil(n / limit)]

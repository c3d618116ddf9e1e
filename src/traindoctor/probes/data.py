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

Where the batch comes from (host metadata only, for TD504/TD512/TD513): an input that is a
row slice of a larger tensor (`X[:64]` of a 10,000-row `X`: its `_base` has the same trailing
shape and more rows) is described with the rows of that tensor; a forward outside training
that reads other rows of the same tensor (a validation split) is noted once. On the first
`LOADER_STEPS` training forwards, the user's frames on the stack (their locals and module
globals, and one attribute level of the objects there) are scanned for `DataLoader`s, each
described once as a `data_loader` event: batch size, dataset length, sampler, workers,
`worker_init_fn`, and the random generators the dataset owns (copied into every worker).
"""

from __future__ import annotations

import math
import random
import sys
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from .._patching import Patch, PatchSet, acquire, release
from .._source import is_user_file, relpath, user_source
from ..timeline import signal
from ._switch import HookSwitch
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
DATA_EVAL_FP = signal(
    "data.eval_fp",
    "per step: {'<key>@<n>.sum|sumsq|wsum|min|max': value} fingerprint of the first input of "
    "the n-th forward outside training whose input has the training input's shape and dtype "
    "(at most MAX_EVAL_FP in a run)",
)
DATA_FIRST_LAYER = signal(
    "data.first_layer",
    "per structural step: {module, type, next, dtype, shape, view_of} of the first module with "
    "params to run (view_of: the shape of the tensor its input is a contiguous view of)",
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
LOADER_STEPS = 3  # training forwards whose callers are scanned for DataLoaders
MAX_FRAMES = 32
MAX_SCOPE_VALUES = 256  # values looked at per scope (locals or globals)
MAX_EVAL_FP = 16  # forwards outside training fingerprinted in a run (TD504's fresh batches)
FP_STATS = ("sum", "sumsq", "wsum", "min", "max")
MAX_FIRST_SEARCH = 64  # leaves looked at for the first layer that takes the model's input
FIRST_STATS = ("in_mean", "in_std", "in_min", "in_max", "out_std")


class DataProbe(Probe):
    name = "data"
    provides: ClassVar[tuple[str, ...]] = (
        DATA_INPUTS,
        DATA_FP,
        DATA_EVAL_FP,
        DATA_SAMPLES,
        DATA_FIRST_LAYER,
        DATA_FIRST_STATS,
    )
    provides_events: ClassVar[tuple[str, ...]] = (
        "data_forward",
        "data_loader",
        "data_base_in_eval",
    )

    def __init__(self) -> None:
        super().__init__()
        self._step = 1
        self._seen: set[str] = set()  # model prefixes fingerprinted in the open step
        self._inputs: dict[str, dict[str, Any]] = {}
        self._weights: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._gen = torch.Generator().manual_seed(0x7D504)  # private: no user RNG draw
        self._layers: HookSwitch | None = None  # leaf hooks, on in the structural steps
        self._capturing = False  # inside the step's first training forward (structural steps)
        self._leaf_names: dict[int, str] = {}  # id(leaf module) -> its name (the shared hook)
        self._first: dict[str, Any] | None = None
        # The model's main input (its largest floating-point tensor argument) in the step's
        # first training forward: (data_ptr, numel). The first layer judged is the first one
        # with weights to take it as it is; the first layer with weights to run stands in
        # (kept in _fallback until the forward ends) when none does.
        self._primary: tuple[int, int] | None = None
        self._fallback: tuple[str, torch.nn.Module, Any, Any, list[str]] | None = None
        self._leaves_seen = 0
        self._active = True  # fingerprint this step (see prepare)
        self._prev_sampled = False
        self._loaders: set[int] = set()  # ids of the DataLoaders described
        self._loader_scans = 0
        self._bases: list[weakref.ref] = []  # larger tensors whose rows a batch slices
        self._base_eval_noted = False
        self._eval_fps = 0
        self._listening_loaders = False

    def listen_early(self) -> None:
        """Zero-code mode attaches at the first backward, after the first epoch's loader was
        iterated: note iterated loaders from the start."""
        if not self._listening_loaders:
            _listen_loaders()
            self._listening_loaders = True

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec
        self.listen_early()
        for prefix, model in ctx.models.items():
            self.handles.append(
                model.register_forward_pre_hook(
                    ctx.hook("probe data", self._make_pre(prefix, rec)), with_kwargs=True
                )
            )
            self.handles.append(
                model.register_forward_hook(ctx.hook("probe data", self._root_done))
            )
        # The first layer's input (structural steps): leaf hooks registered once, off, and
        # switched on for those steps (see _switch.py).
        # One hook object for every leaf, its name looked up by id (a closure per module was
        # ~6 objects more for the cyclic collector to walk, on models of 10,000 modules).
        layers = self._layers = HookSwitch(ctx)
        shared = ctx.hook("probe data", self._on_leaf)
        for prefix, model in ctx.eager_models().items():
            for name, module in model.named_modules():
                if next(module.children(), None) is not None:
                    continue  # leaves only: the layers themselves
                qual = f"{prefix}{name}" if name else (prefix.rstrip(".") or "<model>")
                if self._leaf_names.setdefault(id(module), qual) is qual:
                    hook = shared
                else:  # the same module object under a second model: its own name
                    hook = ctx.hook("probe data", self._make_leaf(qual, rec))
                layers.forward_hook(prefix, module, hook)

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
        self._primary = None
        self._fallback = None
        self._remove_layer_hooks()
        ctx, layers = self.ctx, self._layers
        if ctx is not None and layers is not None and len(layers):
            if step <= ctx.budget.structural_steps:
                layers.on()
            else:
                layers.remove()  # the structural steps are over: for good

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self._first is not None:
            rec.record(step, DATA_FIRST_LAYER, self._first)
            self._first = None
        self._fallback = None  # holds no batch past the step
        self._remove_layer_hooks()

    def detach(self) -> None:
        if self._layers is not None:
            self._layers.remove()
        if self._listening_loaders:
            _stop_listening_loaders()
            self._listening_loaders = False
        super().detach()

    def _remove_layer_hooks(self) -> None:
        if self._layers is not None:
            self._layers.off()

    # -- the batch --------------------------------------------------------------------------
    def _training_forward(self, module: torch.nn.Module) -> bool:
        ctx = self.ctx
        return (
            ctx is not None
            and module.training
            and torch.is_grad_enabled()
            and not ctx.state.validating
        )

    def _make_pre(self, prefix: str, rec: Recorder):
        def pre(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            if not self._training_forward(module):
                if self._bases and not self._base_eval_noted:
                    self._eval_rows(args, kwargs, rec)
                if self._eval_fps < MAX_EVAL_FP:
                    self._eval_fingerprint(prefix, (args, kwargs), rec)
            if not self._active or prefix in self._seen or not self._training_forward(module):
                return
            self._seen.add(prefix)
            if self._loader_scans < LOADER_STEPS and len(self._seen) == 1:
                self._loader_scans += 1
                self._scan_loaders(rec)
            self._capturing = self._layers is not None and self._layers.active
            self._capturing = self._capturing and len(self._seen) == 1
            if self._capturing:
                self._primary = _primary_input((args, kwargs))
                self._fallback = None
                self._leaves_seen = 0
            self._fingerprint(prefix, (args, kwargs), rec)

        return pre

    def _root_done(self, _module: torch.nn.Module, _args: Any, _output: Any) -> None:
        if self._capturing and self._first is None and self._fallback is not None:
            qual, module, x, out, nxt = self._fallback
            self._choose_first(qual, module, x, out)
            if self._first is not None:
                self._first["next"] = nxt
                self._first["takes_model_input"] = False
        self._fallback = None
        if self._capturing:
            self._end_capture()

    def _end_capture(self) -> None:
        """The first layer is found: the leaf hooks have nothing left to do in this step (no
        later forward of the step captures), so they go off now rather than at its end."""
        self._capturing = False
        self._remove_layer_hooks()

    def _fingerprint(self, prefix: str, inputs: Any, rec: Recorder) -> None:
        step = self._step
        tensors = [t for t in iter_tensors(inputs) if _plain(t)]
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
            rows = _rows_of_base(t)
            if rows is not None:
                described[key]["slice_of_rows"] = rows
                if not any(r() is t._base for r in self._bases) and len(self._bases) < 4:
                    self._bases.append(weakref.ref(t._base))
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
            # The user's line that feeds these inputs (`model(x)`): where TD504 points.
            rec.event(step, "data_forward", prefix=prefix, source=user_source(skip=1))
        # All of this step's values in one deferred tensor per device (usually one).
        rec.defer(step, DATA_FP, torch.cat(values), keys=keys)
        if batched is not None and step <= SAMPLE_STEPS and len(self._seen) == 1:
            x = batched.detach()[:MAX_SAMPLES].reshape(min(MAX_SAMPLES, batched.shape[0]), -1)
            stride = max(1, math.ceil(x.shape[1] / SAMPLE_ELEMS))
            xs = x[:, ::stride].to(torch.float32)
            # Row-wise multiply and sum (not a matmul): a sample's value does not depend on its
            # position in the batch, so a repeat compares bit for bit.
            rec.defer(step, DATA_SAMPLES, (xs * self._weight(xs.shape[1], xs.device)).sum(1))

    def _eval_fingerprint(self, prefix: str, inputs: Any, rec: Recorder) -> None:
        """The fingerprint of a forward outside training (a validation, a loss estimate on
        fresh batches) whose first input looks like the training batch (same shape and
        dtype): TD504 tells from them whether the program has other batches than the one it
        trains on."""
        key = f"{prefix}in0"
        known = self._inputs.get(key)
        if known is None:
            return
        t = next((t for t in iter_tensors(inputs) if _plain(t)), None)
        if t is None or list(t.shape) != known["shape"]:
            return
        if str(t.dtype).removeprefix("torch.") != known["dtype"]:
            return
        n = self._eval_fps
        self._eval_fps += 1
        v = _strided(t.detach().reshape(-1), MAX_ELEMS).to(torch.float32)
        w = self._weight(v.numel(), v.device)
        fp = torch.stack([v.sum(), (v * v).sum(), (v * w).sum(), v.amin(), v.amax()])
        rec.defer(self._step, DATA_EVAL_FP, fp, keys=[f"{key}@{n}.{s}" for s in FP_STATS])

    def _eval_rows(self, args: Any, kwargs: Any, rec: Recorder) -> None:
        """A forward outside training on rows of a tensor whose slice is a training batch:
        the rest of that tensor is validation data, not unused training data."""
        bases = [r() for r in self._bases]
        for t in list(iter_tensors((args, kwargs)))[:MAX_INPUTS]:
            if t._base is not None and any(t._base is b for b in bases if b is not None):
                self._base_eval_noted = True
                rec.event(self._step, "data_base_in_eval", rows=int(t.shape[0]) if t.dim() else 0)
                return

    def _scan_loaders(self, rec: Recorder) -> None:
        for name, loader in _user_loaders():
            if id(loader) in self._loaders:
                continue
            self._loaders.add(id(loader))
            facts = describe_loader(loader)
            if facts is not None:
                rec.event(self._step, "data_loader", name=name, **facts)

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
    def _on_leaf(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if self._capturing:
            qual = self._leaf_names.get(id(module))
            if qual is not None:
                self._leaf(qual, module, inputs, output)

    def _make_leaf(self, qual: str, rec: Recorder):
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if self._capturing:
                self._leaf(qual, module, inputs, output)

        return hook

    def _leaf(self, qual: str, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        first = self._first
        if first is not None:
            if len(first["next"]) < 2:
                first["next"].append(type(module).__name__)
            else:
                self._end_capture()
            return
        self._leaves_seen += 1
        fallback = self._fallback
        has_params = next(module.parameters(recurse=False), None) is not None
        x = next(iter_tensors(inputs, max_depth=1), None) if has_params else None
        if x is not None and (self._primary is None or _same_data(x, self._primary)):
            self._choose_first(qual, module, x, output)
            if self._first is not None:
                self._first["takes_model_input"] = self._primary is not None
            return
        if fallback is None:
            if x is not None:
                self._fallback = (qual, module, x, output, [])
        elif len(fallback[4]) < 2:
            fallback[4].append(type(module).__name__)
        if self._leaves_seen >= MAX_FIRST_SEARCH and self._fallback is not None:
            self._root_done(module, inputs, output)  # stop looking: the fallback it is

    def _choose_first(self, qual: str, module: torch.nn.Module, x: Any, output: Any) -> None:
        self._first = {
            "module": qual,
            "type": type(module).__name__,
            "dtype": str(x.dtype).removeprefix("torch."),
            "next": [],
            "shape": [int(d) for d in x.shape],
        }
        # TD525: an input that is a view of a tensor of other sizes, read without a copy or a
        # permute (contiguous): `x.reshape(-1, 3, 32, 32)` of (N, 32, 32, 3) images.
        base = x._base
        if base is not None and x.is_contiguous() and tuple(base.shape) != tuple(x.shape):
            self._first["view_of"] = [int(d) for d in base.shape]
        out = next(iter_tensors(output, max_depth=1), None)
        if x.is_floating_point() and x.numel() >= 2 and out is not None:
            v = _strided(x.detach().reshape(-1), MAX_ELEMS).to(torch.float32)
            o = _strided(out.detach().reshape(-1), MAX_ELEMS).to(torch.float32)
            std_o = o.std() if o.numel() >= 2 else torch.zeros((), device=o.device)
            stats = torch.stack([v.mean(), v.std(), v.amin(), v.amax(), std_o.to(v.device)])
            self._rec.defer(self._step, DATA_FIRST_STATS, stats, keys=list(FIRST_STATS))


def _plain(t: torch.Tensor) -> bool:
    """A dense, real, non-empty tensor: a sparse one (pygcn's adjacency through torch.spmm)
    has no data pointer and no strided view to sample."""
    return t.layout is torch.strided and t.numel() > 0 and not t.is_complex()


def _primary_input(inputs: Any) -> tuple[int, int] | None:
    """(data_ptr, numel) of the forward's floating-point tensor argument with the most elements
    per sample (the images of `unet(x_t, t)`, not its timesteps), when it is batched."""
    best: torch.Tensor | None = None
    for t in list(iter_tensors(inputs))[:MAX_INPUTS]:
        if not t.is_floating_point() or t.dim() < 2 or not _plain(t):
            continue
        if best is None or t[0].numel() > best[0].numel():
            best = t
    return None if best is None else (best.data_ptr(), best.numel())


def _same_data(x: torch.Tensor, primary: tuple[int, int]) -> bool:
    """`x` holds the model input's values as they are: the same tensor or a view of all of it
    (`x.flatten(1)`, `x.view(B, -1)`, `x.float()` of a float tensor)."""
    try:
        return x.data_ptr() == primary[0] and x.numel() == primary[1]
    except Exception:  # noqa: BLE001 - tensors without storage
        return False


def _strided(flat: torch.Tensor, limit: int) -> torch.Tensor:
    """A view of at most `limit` evenly spaced elements (no copy for a contiguous input)."""
    n = flat.numel()
    return flat if n <= limit else flat[:: math.ceil(n / limit)]


def _rows_of_base(t: torch.Tensor) -> int | None:
    """Rows of the tensor `t` is a row slice of (`X[:64]`, `X[i:j]`), when it has more rows."""
    base = t._base
    if base is None or t.dim() < 1 or base.dim() != t.dim() or base.shape[1:] != t.shape[1:]:
        return None
    return int(base.shape[0]) if base.shape[0] > t.shape[0] else None


# DataLoaders the script iterated while a doctor listened (weak: never kept alive by us).
_ITERATED: list[weakref.ref] = []
MAX_LOADERS = 64


def _iter_of(original: Callable[..., Any]) -> Callable[..., Any]:
    def __iter__(loader: Any) -> Any:  # noqa: N807
        try:
            if len(_ITERATED) < MAX_LOADERS and not any(r() is loader for r in _ITERATED):
                _ITERATED.append(weakref.ref(loader))
        except Exception:  # noqa: BLE001  (never in the user's way)
            pass
        return original(loader)

    __iter__.__wrapped__ = original  # type: ignore[attr-defined]
    return __iter__


def _iter_patch() -> list[Patch]:
    from torch.utils.data import DataLoader

    return [Patch(DataLoader, "__iter__", _iter_of)]


_ITER_PATCH = PatchSet("DataLoader.__iter__", _iter_patch)


def _listen_loaders() -> None:
    """Patch DataLoader.__iter__ to note each loader the script iterates (`for x, y in loader`
    calls it once per epoch). Reading the user's function frames' `f_locals` for them, as
    before, left in Python 3.11 a snapshot of those locals on the frame, which kept the
    step's loss and batch alive for the rest of the loop (a memory leak and a false TD505)."""
    try:
        acquire(_ITER_PATCH)  # one hold per listening probe
    except Exception:  # noqa: BLE001  (no DataLoader to import: nothing to note)
        return


def _stop_listening_loaders() -> None:
    if release(_ITER_PATCH):
        _ITERATED.clear()


def _user_loaders() -> list[tuple[str, Any]]:
    """(name, DataLoader) of the loaders the script iterated, named after a user module's
    global or one attribute level of one (`trainer.train_loader`) when one holds it; module
    globals only: function frames' locals are not read (see _listen_loaders)."""
    loaders = [ld for ld in (r() for r in _ITERATED) if ld is not None]
    if not loaders:
        return []
    names: dict[int, str] = {}
    frame = sys._getframe(1)
    globals_seen: set[int] = set()
    for _ in range(MAX_FRAMES):
        if frame is None:
            break
        scope = frame.f_globals
        if is_user_file(frame.f_code.co_filename) and id(scope) not in globals_seen:
            globals_seen.add(id(scope))
            for name, value in list(scope.items())[:MAX_SCOPE_VALUES]:
                if any(value is ld for ld in loaders):
                    names.setdefault(id(value), name)
                    continue
                attrs = getattr(value, "__dict__", None)
                if not isinstance(attrs, dict) or isinstance(value, type) or _is_module(value):
                    continue
                for attr, inner in list(attrs.items())[:MAX_SCOPE_VALUES]:
                    if any(inner is ld for ld in loaders):
                        names.setdefault(id(inner), f"{name}.{attr}")
        frame = frame.f_back
    return [(names.get(id(ld), "DataLoader"), ld) for ld in loaders]


def _is_module(value: Any) -> bool:
    return type(value).__name__ == "module"


def _rng_kind(value: Any) -> str | None:
    if isinstance(value, torch.Generator):
        return "torch.Generator"
    if isinstance(value, random.Random):
        return "random.Random"
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(value, np.random.Generator):
            return "numpy.random.Generator"
        if isinstance(value, np.random.RandomState):
            return "numpy.random.RandomState"
    return None


def dataset_generators(dataset: Any, depth: int = 2) -> list[tuple[str, str]]:
    """(attribute path, kind) of the random generators a dataset owns, down `depth` attribute
    levels (a transform object's own generator, a list of transforms)."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[str, Any, int]] = [("dataset", dataset, 0)]
    seen: set[int] = set()
    while stack and len(seen) < 512:
        path, obj, level = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, list | tuple):
            items = list(enumerate(obj))[:32]
            children = [(f"{path}[{i}]", v) for i, v in items]
        else:
            attrs = getattr(obj, "__dict__", None)
            if not isinstance(attrs, dict) or isinstance(obj, type) or _is_module(obj):
                continue
            children = [(f"{path}.{k}", v) for k, v in list(attrs.items())[:MAX_SCOPE_VALUES]]
        for child_path, value in children:
            if isinstance(value, torch.Tensor):
                continue
            kind = _rng_kind(value)
            if kind is not None:
                out.append((child_path, kind))
            elif level < depth:
                stack.append((child_path, value, level + 1))
    return sorted(out)


def describe_loader(loader: Any) -> dict[str, Any] | None:
    """Host facts of a DataLoader: what TD504, TD512 and TD513 judge a batch's source by."""
    try:
        dataset = loader.dataset
        try:
            length = len(dataset)
        except TypeError:
            length = None  # an IterableDataset without __len__
        sampler = getattr(loader, "sampler", None)
        return {
            "batch_size": loader.batch_size,
            "dataset_len": length,
            "batches": _batches(loader),
            "dataset_type": type(dataset).__name__,
            "sampler": type(sampler).__name__ if sampler is not None else None,
            "num_workers": int(getattr(loader, "num_workers", 0) or 0),
            "worker_init_fn": getattr(loader, "worker_init_fn", None) is not None,
            "drop_last": bool(getattr(loader, "drop_last", False)),
            "generators": [
                {"path": path, "kind": kind, "used_in": _used_in(dataset, path)}
                for path, kind in dataset_generators(dataset)
            ],
        }
    except Exception:  # noqa: BLE001 - an odd loader is described by nothing
        return None


def _batches(loader: Any) -> int | None:
    """Batches an epoch as the loader itself counts them (its sampler or batch_sampler, a
    DistributedSampler's shard, a WeightedRandomSampler's num_samples, drop_last); None where
    it has no length (an IterableDataset without __len__) or is not a torch DataLoader (a
    user's class may count something else)."""
    from torch.utils.data import DataLoader, IterableDataset

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None  # an iterable's len() is its dataset's guess, not what one rank yields
    try:
        n = len(loader)
    except Exception:  # noqa: BLE001 - a sampler without a length
        return None
    return n if isinstance(n, int) and n > 0 else None


def _used_in(dataset: Any, path: str) -> str | None:
    """`Class.method (file:line)` of a method other than `__init__` of the generator's owner
    that reads it (`self.<attr>` in its source): the generator is drawn from per item, not
    only when the data set is built. None when no such method is found."""
    import inspect
    import re

    owner_path, _, attr = path.rpartition(".")
    if not owner_path or not attr.isidentifier():
        return None
    owner = dataset
    for part in owner_path.split(".")[1:]:
        if "[" in part:
            return None  # inside a list of transforms: not followed
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    pattern = re.compile(rf"\bself\.{re.escape(attr)}\b")
    for klass in type(owner).__mro__[:4]:
        if klass is object:
            break
        for name, fn in vars(klass).items():
            if name == "__init__" or not inspect.isfunction(fn):
                continue
            try:
                lines, start = inspect.getsourcelines(fn)
                filename = inspect.getsourcefile(fn) or "?"
            except (OSError, TypeError):
                continue
            for i, line in enumerate(lines):
                if pattern.search(line):
                    where = f"{relpath(filename)}:{start + i}"
                    return f"{klass.__name__}.{name} ({where})"
    return None

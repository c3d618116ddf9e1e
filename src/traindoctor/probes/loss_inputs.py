"""Loss inputs: what flows into the standard losses (shapes, dtypes, value ranges, labels).

The losses of `torch.nn.functional` (`cross_entropy`, `nll_loss`, `binary_cross_entropy`,
`binary_cross_entropy_with_logits`, `mse_loss`, `l1_loss`, `smooth_l1_loss`, `huber_loss`,
`kl_div`, `poisson_nll_loss`, ...) are wrapped on the `torch.nn.functional` module while at least
one doctor listens (process-wide, shared, restored exactly with the last listener). The loss
modules (`nn.CrossEntropyLoss`, `nn.MSELoss`, ...) call `F.<loss>` at call time, so they are seen
too. Not seen: a name bound before `watch()` (`from torch.nn.functional import cross_entropy`),
losses written by hand, `torch.nn._reduction`-free C++ entry points (`torch._C._nn.*`), and in
zero-code mode the losses of step 1 (the doctor attaches at the first backward).

A wrapped call always runs the original with the same arguments, once, and returns its result
as is; what the probe does runs before and after it under the doctor's guard. Only training
losses are looked at (grad enabled, an input that requires grad): a loss computed on detached
tensors for a log line trains nothing.

Per call, on the structural and sampled steps only (an unsampled step costs one flag check):
- for class-index targets over at most `MAX_HIST_CLASSES` classes, a label histogram
  (`scatter_add_` on the device, no sync), summed over the step's calls of one site; this
  one also on every step up to `LABEL_STEPS` (consecutive batches, for TD512);
- host facts (shapes, dtypes, class count, the op that produced the input, the user's line)
  as a `loss_input` event when a site or its shapes are new, and device facts (input min/max,
  rows summing to 1, values at the loss's own clamp, labels' min/max and, for a summed class
  loss, how many labels count, share of non-positive values fed to a log) stacked into one
  deferred read-back;
- with a new site or shapes, the layout of the input (host metadata of the autograd graph only):
  along which dim the layer that produced it (a Linear's features, a conv's channels, a
  softmax's normalized dim) ends up after the views, permutes and transposes between, and a
  `view`/`reshape` that reorders the sizes (used as a transpose);
- for inputs that come out of a softmax/log_softmax (and the inputs of `nll_loss`/`kl_div`,
  which expect log-probabilities), on the site's 1st, 2nd, 4th, 8th, ... observed call: how far
  the input is from normalized along each dim (|logsumexp - 0| or |sum - 1|, max over the
  slices), and the same for a float target of the same shape: which dim was normalized.
No tensor is kept beyond the call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from .._graph import VIEW_NODES
from .._hooks import compiling
from .._mode_stack import UsersOff
from .._patching import Patch, PatchSet, acquire, release
from .._source import call_site, relpath, user_source_with_code
from .._warnings import call_as_caller
from ..timeline import signal
from . import next_token_leak
from .base import AttachContext, Probe, Recorder
from .next_token_leak import unsafe_node
from .parts import _backward_hooks

LOSS_INPUT_STATS = signal(
    "loss_inputs.stats",
    "per step: {'<site>.<stat>': value} device facts of each loss call site on observed steps "
    "(in_min, in_max, rowsum_dev, lse_dev, nonfinite, clamped, t_min, t_max, t_mean, "
    "t_ms, log_arg_nonpos, n_valid, own_argmax/own_n/own_plain, ids_offset, ids_next_t, nt_share/nt_dep/nt_dim/nt_rows/nt_attn, pad_val/pad_rows/pad_share/pad_inner/pad_rmin/pad_rmax, "
    "lnorm<d>/pnorm<d>/tnorm<d>, clamp_zero/clamp_rows/clamp_tgt, rng_out/rng_floor/rng_base, "
    "loss); sites are described by "
    "`loss_input` events",
)
LOSS_INPUT_LABELS = signal(
    "loss_inputs.labels",
    "per step: {'<site>.<class>': count} label histogram of class-index targets (<= 64 classes)",
)
LOSS_INPUT_TOP_LABEL = signal(
    "loss_inputs.top_label",
    "per step: {'<site>.top': class, '<site>.top_n': its count, '<site>.n': labels} of "
    "class-index targets over more than 64 classes (the batch's most frequent class)",
)
LOSS_INPUT_OBSERVED = signal(
    "loss_inputs.observed", "per step: list of loss sites whose inputs were measured"
)

LOSSES = (
    "cross_entropy",
    "nll_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "kl_div",
    "poisson_nll_loss",
    "soft_margin_loss",
    "multilabel_soft_margin_loss",
    "ctc_loss",
)
CLASS_LOSSES = ("cross_entropy", "nll_loss")
# Elementwise losses that broadcast their two arguments against each other.
ELEMENTWISE = (
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "kl_div",
    "poisson_nll_loss",
    "soft_margin_loss",
)
MAX_HIST_CLASSES = 64
MAX_TOP_CLASSES = 1 << 20  # above MAX_HIST_CLASSES: only the batch's most frequent class
LABEL_STEPS = 32  # label histograms on every step up to this one, then on sampled steps
MAX_EVENTS = 64
MAX_NOGRAD_EVENTS = 256  # loss_without_grad events: one per step at most
_VIEWS = VIEW_NODES  # the producer of a loss input is looked for below them
_LOGS = frozenset({"LogBackward0", "Log2Backward0", "Log10Backward0"})
_SOFTMAX = frozenset({"SoftmaxBackward0", "LogSoftmaxBackward0"})
# Layers whose output has a feature dim: a Linear's last (2-D addmm/mm output), a conv's 1.
_LINEAR = frozenset({"AddmmBackward0", "MmBackward0"})
_CONV = frozenset({"ConvolutionBackward0"})
_RESHAPES = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"})
LOG_INPUT_LOSSES = ("nll_loss", "kl_div")  # their input is meant to be log-probabilities
MAX_NORM_DIMS = 6
LEAK_TRIES = 8  # next-token leak experiments a site (on its 1st, 2nd, 4th, ... measured call)

# -- the shared patch of torch.nn.functional ------------------------------------------------
_listeners: list[Any] = []  # objects with loss_call(fn, args, kwargs) -> after-callback | None
_local = threading.local()


def _wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def loss(*args: Any, **kwargs: Any) -> Any:
        if compiling():
            return original(*args, **kwargs)
        if getattr(_local, "busy", False):
            return original(*args, **kwargs)  # inside our own call: its warnings are caught there
        if not _listeners:
            return call_as_caller(__file__, original, *args, **kwargs)
        afters = []
        _local.busy = True  # a loss called from inside another (or from a probe) is not a call
        try:
            with UsersOff():  # the user's tensor subclasses and modes do not see our reads
                for listener in list(_listeners):
                    try:
                        after = listener.loss_call(name, args, kwargs)
                    except Exception:  # noqa: BLE001 - never reaches the user's call
                        after = None
                    if after is not None:
                        afters.append(after)
        finally:
            _local.busy = False
        _local.busy = True  # torch-function modes re-enter the public function: one call
        try:
            # torch's own warnings (shapes that broadcast) name the user's line, not this one.
            out = call_as_caller(__file__, original, *args, **kwargs)
        finally:
            _local.busy = False
        for after in afters:
            try:
                with UsersOff():
                    after(out)
            except Exception:  # noqa: BLE001
                pass
        return out

    loss.__wrapped__ = original  # type: ignore[attr-defined]
    loss.__name__ = getattr(original, "__name__", name)
    # Pickled by reference, as the original is (`criterion=F.nll_loss` in a saved config):
    # the name leads to this wrapper while it is installed, to the original once restored.
    loss.__qualname__ = getattr(original, "__qualname__", loss.__name__)
    loss.__module__ = getattr(original, "__module__", None) or loss.__module__
    loss.__doc__ = getattr(original, "__doc__", None)
    return loss


def _patches() -> list[Patch]:
    """One patch per wrapped loss (skipped where this torch lacks the function)."""
    import torch.nn.functional as F

    def of(name: str) -> Callable[[Any], Any]:
        return lambda original: _wrap(name, original)

    out = [Patch(F, name, of(name), optional=True) for name in LOSSES if name != "cross_entropy"]
    # cross_entropy is wrapped one level down, at the kernel entry F.cross_entropy calls, so
    # that F.cross_entropy itself stays the object InitProbe wraps and unwraps on its own
    # schedule (each probe's wrapper then calls the original directly).
    out.append(Patch(torch._C._nn, "cross_entropy_loss", of("cross_entropy"), optional=True))
    return out


LOSS_PATCHES = PatchSet("torch.nn.functional losses", _patches)


def add_loss_listener(listener: Any) -> None:
    acquire(LOSS_PATCHES)  # one hold per listener
    _listeners.append(listener)


def remove_loss_listener(listener: Any) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
        release(LOSS_PATCHES)


def loss_patched() -> bool:
    return bool(_listeners)


# -- host facts -----------------------------------------------------------------------------
def _first_input(node: Any) -> Any:
    """The node that made `node`'s first input with a graph (None at a leaf)."""
    nxt = [n for n, _ in node.next_functions if n is not None]
    return nxt[0] if nxt else None


def producer(t: torch.Tensor) -> tuple[list[str], Any]:
    """Names of the autograd ops that produced `t` (view-like ones skipped; up to 3 real ops
    down the first input), and the first real node: host metadata only."""
    names: list[str] = []
    first = None
    node = t.grad_fn
    for _ in range(12):
        if node is None or len(names) >= 3:
            break
        name = type(node).__name__
        if name not in _VIEWS:
            names.append(name)
            first = first or node
        node = _first_input(node)
    return names, first


def values_dtype(t: torch.Tensor) -> str | None:
    """The least precise floating dtype the values of `t` were held in since the op that
    produced them, through the view-like ops and dtype casts between (a bfloat16 softmax cast
    to float32 is bfloat16 still): host metadata of the autograd graph only (each node's output
    dtype), nothing read on the device."""
    worst = t.dtype if t.is_floating_point() else None
    node = t.grad_fn
    for _ in range(12):
        if node is None:
            break
        try:
            meta = node._input_metadata  # the forward op's outputs, as the backward gets them
            dtype = meta[0].dtype if meta else None
        except Exception:  # noqa: BLE001 - a torch without it, or a node without metadata
            dtype = None
        floating = isinstance(dtype, torch.dtype) and dtype.is_floating_point
        if floating and (worst is None or torch.finfo(dtype).eps > torch.finfo(worst).eps):
            worst = dtype
        if type(node).__name__ not in _VIEWS:
            break  # the producer: where the values were last rounded
        node = _first_input(node)
    return str(worst).replace("torch.", "") if worst is not None else None


def _saved(node: Any, attr: str) -> Any:
    try:
        return getattr(node, attr)
    except Exception:  # noqa: BLE001 - freed or absent
        return None


def _signed(value: int) -> int:
    """An int saved by autograd as unsigned (-1 comes back as 2**64 - 1), signed again."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _sizes(saved: Any) -> list[int] | None:
    """Saved sizes (`_saved_self_sym_sizes`) as ints, or None when they cannot be read."""
    try:
        return [int(d) for d in saved]
    except (TypeError, ValueError):
        return None


def _dim(value: Any, ndim: int) -> int | None:
    """A dim saved by autograd (unsigned: -1 comes back as 2**64 - 1) as an index in [0, ndim)."""
    if not isinstance(value, int) or ndim <= 0:
        return None
    value = _signed(value)
    return value % ndim if -ndim <= value < ndim else None


def _input_shape(node: Any, name: str, out: list[int]) -> list[int] | None:
    """Shape of the input of a view-like autograd node whose output has shape `out`."""
    sizes = _saved(node, "_saved_self_sym_sizes")
    if sizes is not None:
        return _sizes(sizes)
    n = len(out)
    if name in ("CloneBackward0", "ToCopyBackward0", "ContiguousBackward0"):
        return list(out)
    if name == "PermuteBackward0":
        dims = _saved(node, "_saved_dims")
        if not isinstance(dims, tuple | list) or len(dims) != n:
            return None
        shape = [0] * n
        for i, d in enumerate(dims):
            j = _dim(d, n)
            if j is None:
                return None
            shape[j] = out[i]
        return shape
    if name in ("TransposeBackward0", "TBackward0"):
        if name == "TBackward0":
            a, b = (0, 1) if n == 2 else (0, 0)
        else:
            a, b = _dim(_saved(node, "_saved_dim0"), n), _dim(_saved(node, "_saved_dim1"), n)
            if a is None or b is None:
                return None
        shape = list(out)
        shape[a], shape[b] = shape[b], shape[a]
        return shape
    if name == "UnsqueezeBackward0":
        d = _dim(_saved(node, "_saved_dim"), n)
        return None if d is None else out[:d] + out[d + 1 :]
    return None


def _prod(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _follow(name: str, node: Any, src: list[int], dst: list[int], dim: int) -> int | None:
    """Where dim `dim` of a view-like node's input (shape `src`) is in its output (`dst`), or
    None when the node merges, splits or drops it."""
    n = len(src)
    if name == "PermuteBackward0":
        dims = [_dim(d, n) for d in _saved(node, "_saved_dims") or ()]
        return dims.index(dim) if dim in dims else None
    if name in ("TransposeBackward0", "TBackward0"):
        if name == "TBackward0":
            a, b = (0, 1) if n == 2 else (0, 0)
        else:
            a, b = _dim(_saved(node, "_saved_dim0"), n), _dim(_saved(node, "_saved_dim1"), n)
        return b if dim == a else a if dim == b else dim
    if name in ("SliceBackward0", "CloneBackward0", "ToCopyBackward0", "ContiguousBackward0"):
        return dim
    if name == "SelectBackward0":
        d = _dim(_saved(node, "_saved_dim"), n)
        return None if d is None or d == dim else dim - (d < dim)
    if name == "ExpandBackward0":
        # Every dim stays in place (new ones lead), sized-1 dims grow: `(N, C, 1, 1)` expanded
        # to `(N, C, H, W)` keeps C at dim 1, though the elements after it change.
        j = dim + len(dst) - n
        return j if 0 <= j < len(dst) and dst[j] == src[dim] else None
    # A reshape of a contiguous layout: a dim survives where the same size has the same
    # number of elements after it (row-major); squeeze/unsqueeze/view alike.
    after = _prod(src[dim + 1 :])
    for j, size in enumerate(dst):
        if size == src[dim] and _prod(dst[j + 1 :]) == after:
            return j
    return None


def layout(t: torch.Tensor, param_names: dict[int, str] | None = None) -> dict[str, Any]:
    """Host metadata of the autograd graph below a loss input `t`: the op that produced it
    (below view-like ops), the dim of `t` that op's feature/normalized dim ends up at, and a
    `view`/`reshape` that reorders the sizes. No device work."""
    out: dict[str, Any] = {}
    shape = [int(d) for d in t.shape]
    node = t.grad_fn
    chain: list[tuple[str, Any, list[int], list[int]]] = []  # (name, node, in, out), top down
    for _ in range(16):
        if node is None:
            break
        name = type(node).__name__
        if name == "AddBackward0" and _bias_add(node) is not None:
            # `x @ W.t() + b`: F.linear on a non-contiguous input; the add keeps the shape.
            node = _bias_add(node)
            continue
        if name not in _VIEWS:
            break
        src = _input_shape(node, name, shape)
        if src is None:
            return out
        nxt = _first_input(node)
        below = type(nxt).__name__ if nxt is not None else None
        # Sizes reordered by a reshape of dims that a real op (or a permute) made; dims that
        # a reshape made itself (a flat vector viewed as (4, 8)) carry no meaning.
        reordered = src != shape and len(src) >= 2 and sorted(src) == sorted(shape)
        if name in _RESHAPES and reordered and below not in _RESHAPES:
            out.setdefault("view_reordered", [src, list(shape)])
        if name in ("PermuteBackward0", "TransposeBackward0", "TBackward0"):
            out["moved"] = True
        if name == "SelectBackward0" and "selected" not in out:
            # One column of a wider output (`out[:, 0]`): its dim and index in the input.
            d, i = _dim(_saved(node, "_saved_dim"), len(src)), _saved(node, "_saved_index")
            if d is not None and isinstance(i, int):
                i = _signed(i)
                out["selected"] = [d, i % src[d] if -src[d] <= i < src[d] else i]
        chain.append((name, node, src, shape))
        shape = src
        node = nxt
    if node is None:
        return out
    head = type(node).__name__
    out["head_op"] = head
    dim = None
    if (head in _LINEAR and len(shape) == 2) or (head in _CONV and len(shape) >= 3):
        dim = 1  # a Linear's (N, features) output, a conv's (N, channels, ...)
        out["head_features"] = shape[1]
        module = _weight_module(node, param_names or {})
        if module:
            out["head_module"] = module
    elif head in _SOFTMAX:
        dim = _dim(_saved(node, "_saved_dim"), len(shape))
        out["softmax_dim"] = dim
        out["softmax_shape"] = list(shape)
        # Where each dim of the softmax's output ends up in the loss input (None: merged,
        # split or dropped): the dim the loss reads may be another dim of that output.
        ends = []
        for d in range(len(shape)):
            for name, n, src, dst in reversed(chain):
                d = _follow(name, n, src, dst, d)
                if d is None:
                    break
            ends.append(d)
        out["softmax_dims_in_input"] = ends
    if dim is None:
        return out
    for name, n, src, dst in reversed(chain):
        dim = _follow(name, n, src, dst, dim)
        if dim is None:
            break
    out["head_dim"] = dim  # None: merged, split or dropped on the way
    return out


def _bias_add(node: Any) -> Any:
    """The non-bias input of an add whose other input is a 1-D leaf (a Linear's bias)."""
    nxt = list(node.next_functions)
    if len(nxt) != 2:
        return None
    for i, (n, _) in enumerate(nxt):
        var = getattr(n, "variable", None)
        if isinstance(var, torch.Tensor) and var.dim() == 1:
            other = nxt[1 - i][0]
            return other if other is not None else None
    return None


def _weight_module(node: Any, param_names: dict[int, str]) -> str | None:
    """The module whose weight (2-D or more) an addmm/mm node multiplies by (through its
    `t()`) or a convolution node convolves with."""
    for n, _ in node.next_functions:
        if n is None:
            continue
        cands = [n] + [m for m, _ in n.next_functions if m is not None]
        for c in cands:
            var = getattr(c, "variable", None)
            if isinstance(var, torch.Tensor) and var.dim() >= 2 and id(var) in param_names:
                return param_names[id(var)].rpartition(".")[0] or param_names[id(var)]
    return None


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


_KWARGS = {  # name -> position in the functional signature
    # torch._C._nn.cross_entropy_loss(input, target, weight, reduction enum, ignore_index, ls)
    "cross_entropy": {"ignore_index": 4, "reduction": 3, "label_smoothing": 5},
    "nll_loss": {"ignore_index": 4, "reduction": 6},
    "kl_div": {"reduction": 4, "log_target": 5},
    "poisson_nll_loss": {"log_input": 2},
    # torch._C._nn.mse_loss(input, target, reduction enum, ...): 0 none, 1 mean, 2 sum
    "mse_loss": {"reduction": 2},
    "l1_loss": {"reduction": 2},
    "smooth_l1_loss": {"reduction": 2},
    "huber_loss": {"reduction": 2},
}


def _add(a: float, b: float) -> float:
    return a + b


def _first(a: float, _b: float) -> float:
    return a


class LossInputsProbe(Probe):
    name = "loss_inputs"
    provides: ClassVar[tuple[str, ...]] = (
        LOSS_INPUT_STATS,
        LOSS_INPUT_LABELS,
        LOSS_INPUT_TOP_LABEL,
        LOSS_INPUT_OBSERVED,
    )
    provides_events: ClassVar[tuple[str, ...]] = (
        "loss_input",
        "loss_call_reversed",
        "loss_without_grad",
    )

    def __init__(self) -> None:
        super().__init__()
        self._sites: dict[tuple[str, Any], int] = {}
        self._described: set[tuple[Any, ...]] = set()
        self._events = 0
        self._keys: dict[tuple[int, int], list[str]] = {}
        self._calls: dict[int, int] = {}  # site -> observed calls (normalization is sampled)
        self._listening = False
        self._embeds_key: tuple[int, ...] | None = None
        self._embeds_seen = False
        self._nograd_step: int | None = None
        self._nograd_events = 0
        self._leak_tries: dict[int, int] = {}  # site -> next-token leak experiments run

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec
        add_loss_listener(self)
        self._listening = True

    def detach(self) -> None:
        if self._listening:
            remove_loss_listener(self)
            self._listening = False
        super().detach()

    # Called by the patch for every watched loss call (guarded there and here).
    def loss_call(self, fn: str, args: tuple, kwargs: dict) -> Callable[[Any], None] | None:
        ctx = self.ctx
        if ctx is None:
            return None
        state = ctx.state
        if state.closed or state.validating or "probe loss_inputs" in ctx.guard.disabled:
            return None
        t0 = time.perf_counter()
        try:
            return ctx.guard.call("probe loss_inputs", self._observe, ctx, fn, args, kwargs)
        finally:
            ctx.budget.spend(time.perf_counter() - t0)

    def _without_grad(self, ctx: AttachContext, fn: str) -> None:
        """A loss computed with gradients off (a validation loss): one `loss_without_grad`
        event per step, MAX_NOGRAD_EVENTS in all (TD403 reads it as a sign that gradient-free
        forwards of that step evaluated the model)."""
        step = ctx.state.step
        if step == self._nograd_step or self._nograd_events >= MAX_NOGRAD_EVENTS:
            return
        self._nograd_step = step
        self._nograd_events += 1
        self._rec.event(step, "loss_without_grad", fn=fn)

    def _observe(self, ctx: AttachContext, fn: str, args: tuple, kwargs: dict) -> Callable | None:
        inp = _arg(args, kwargs, 0, "input")
        tgt = _arg(args, kwargs, 1, "target")
        if not isinstance(inp, torch.Tensor) or not isinstance(tgt, torch.Tensor):
            return None
        if not torch.is_grad_enabled():
            self._without_grad(ctx, fn)
            return None
        rec, step = self._rec, ctx.state.step
        if not inp.requires_grad:
            # A loss on detached values (a logged metric) trains nothing; but an elementwise
            # loss given the prediction as its target (`mse_loss(td_target, q)`) does: its
            # shapes are described (host metadata only), nothing else is measured.
            if tgt.requires_grad and fn in ELEMENTWISE and tuple(inp.shape) != tuple(tgt.shape):
                self._describe_reversed(rec, step, fn, inp, tgt)
            return None
        sampled = ctx.budget.sampled(step)
        if not sampled and step > LABEL_STEPS:
            return None  # unsampled steps cost one flag check: the budget is per step
        cdim = 1 if inp.dim() >= 2 else 0
        classes = int(inp.shape[cdim]) if fn in CLASS_LOSSES and inp.dim() >= 1 else None
        opts = {k: _arg(args, kwargs, i, k) for k, i in _KWARGS.get(fn, {}).items()}
        index_target = classes is not None and not tgt.is_floating_point() and tgt.dim() < inp.dim()
        ignore = opts.get("ignore_index")
        ignore = -100 if ignore is None else int(ignore)
        if not sampled:
            # The first steps: the label histogram only (one deferred scatter_add), so that
            # TD512 sees consecutive batches, not batches an interval apart.
            if index_target:
                with torch.no_grad():
                    self._labels(rec, step, self._site(fn), tgt, classes, ignore)
            return None
        site = self._site(fn)
        with torch.no_grad():
            if index_target:
                self._labels(rec, step, site, tgt, classes, ignore)
            names, node = producer(inp)
            self._describe(rec, step, site, fn, inp, tgt, classes, cdim, names, node, opts)
            stats = self._stats(fn, inp, tgt, cdim, classes, index_target, ignore, node, opts)
            calls = self._calls[site] = self._calls.get(site, 0) + 1
            if calls & (calls - 1) == 0 and fn != "ctc_loss":  # 1st, 2nd, 4th, ... call
                stats.update(_normalization(fn, inp, tgt, names, opts))
                if index_target:
                    stats.update(_own_argmax(inp, tgt, cdim, ignore))
                # Token-id targets: no graph walk for models that read no token ids.
                seq = index_target and tgt.dim() in (1, 2) and tgt.numel() >= 8
                if seq and self._embeds(ctx):
                    found: dict[str, Any] | None = None
                    if self._leak_tries.get(site, 0) < LEAK_TRIES:
                        found = {}
                    stats.update(_copied_ids(inp, tgt, ignore, found))
                    if found:
                        stats.update(self._leak(ctx, site, inp, tgt, ignore, found))
                elif self._leak_tries.get(site, 0) < LEAK_TRIES and self._embeds(ctx):
                    # A label-smoothed kl_div over (N, V) log-probabilities (dreamgonfly's
                    # LabelSmoothingLoss): its token targets are the rows' argmax, the
                    # all-zero rows (padding) ignored. For TD524 only (not TD520's stats).
                    hard = _smoothed_tokens(fn, inp, tgt)
                    if hard is not None:
                        found = {}
                        _copied_ids(inp, hard, -100, found)
                        if found:
                            stats.update(self._leak(ctx, site, inp, hard, -100, found))
        rec.append(step, LOSS_INPUT_OBSERVED, site)
        keys = [f"{site}.{k}" for k in stats]
        if keys:
            vals = torch.stack([v.detach().double().reshape(()) for v in stats.values()])
            rec.defer(step, LOSS_INPUT_STATS, vals, keys=keys)

        def after(out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.numel() >= 1:
                value = out.detach().reshape(()) if out.numel() == 1 else out.detach().mean()
                rec.defer(step, LOSS_INPUT_STATS, value.double().reshape(1), keys=[f"{site}.loss"])

        return after

    def _leak(
        self,
        ctx: AttachContext,
        site: int,
        inp: torch.Tensor,
        tgt: torch.Tensor,
        ignore: int,
        found: dict[str, Any],
    ) -> dict[str, torch.Tensor]:
        """TD524's experiment (next_token_leak.py) on this call's graph, when its targets are
        the next ids an embedding read; at most LEAK_TRIES times a site, never where an extra
        backward could act."""
        if not found.get("nodes"):
            return {}
        # A distributed job's wrappers hook the forward's outputs (FSDP's pre-backward
        # unshard): an extra backward would run them. Single-process runs only.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if found.get("unsafe") or distributed or _backward_hooks(ctx):
            self._leak_tries[site] = LEAK_TRIES
            return {}
        head = layout(inp)
        if head.get("head_op") in _SOFTMAX and head.get("head_dim") != 1:
            # A (log_)softmax over another dim than the classes (TD508's case) mixes the
            # positions itself: a dependence measured through it is not the model's.
            self._leak_tries[site] = LEAK_TRIES
            return {}
        if not next_token_leak.memory_allows(inp):
            return {}  # tried again on a later measured call
        try:
            out = next_token_leak.measure(inp, tgt, ignore, found["nodes"])
        except Exception:  # noqa: BLE001  (an OOM or an op without a backward: stop trying,
            self._leak_tries[site] = LEAK_TRIES  # the rest of the probe goes on measuring)
            return {}
        if out:
            tries = self._leak_tries.get(site, 0) + 1
            # A leak measured is the verdict: no further extra backward for it.
            self._leak_tries[site] = LEAK_TRIES if float(out["nt_dep"]) > 0 else tries
            out["nt_attn"] = torch.tensor(1.0 if found.get("attn") else 0.0, dtype=torch.float64)
        return out

    def _embeds(self, ctx: AttachContext) -> bool:
        """Whether a watched model holds an nn.Embedding (checked once per model set)."""
        key = tuple(id(m) for m in ctx.models.values())
        if self._embeds_key != key:
            self._embeds_key = key
            self._embeds_seen = any(
                isinstance(m, torch.nn.Embedding)
                for model in ctx.models.values()
                for m in model.modules()
            )
        return self._embeds_seen

    def _site(self, fn: str) -> int:
        where = call_site()
        key = (fn, where)
        site = self._sites.get(key)
        if site is None:
            site = self._sites[key] = len(self._sites)
        return site

    def _labels(
        self, rec: Recorder, step: int, site: int, tgt: torch.Tensor, classes: int, ignore: int
    ) -> None:
        if classes <= MAX_HIST_CLASSES:
            self._histogram(rec, step, site, tgt, classes, ignore)
        elif classes <= MAX_TOP_CLASSES:
            self._top_label(rec, step, site, tgt, classes, ignore)

    def _top_label(
        self, rec: Recorder, step: int, site: int, tgt: torch.Tensor, classes: int, ignore: int
    ) -> None:
        """The most frequent class of the call's labels, its count and the count of valid
        labels (one deferred read of 3 values; the counts per class stay on the device). A
        site called several times in a step keeps its first call's."""
        t = tgt.reshape(-1).long()
        valid = (t >= 0) & (t < classes)
        if 0 <= ignore < classes:
            valid &= t != ignore
        t = torch.where(valid, t, classes)
        counts = torch.zeros(classes + 1, dtype=torch.float64, device=t.device)
        counts.scatter_add_(0, t, torch.ones(t.shape, dtype=torch.float64, device=t.device))
        top_n, top = counts[:classes].max(0)
        vals = torch.stack([top.double(), top_n, valid.sum().double()])
        keys = [f"{site}.top", f"{site}.top_n", f"{site}.n"]
        rec.defer(step, LOSS_INPUT_TOP_LABEL, vals, keys=keys, reduce=_first)

    def _histogram(
        self, rec: Recorder, step: int, site: int, tgt: torch.Tensor, classes: int, ignore: int
    ) -> None:
        t = tgt.reshape(-1).long()
        # Out-of-range labels and ignore_index (negative, or >= C) go to an overflow bin: no
        # sync, no device assert. A non-negative ignore_index < C is masked out explicitly.
        valid = (t >= 0) & (t < classes)
        if 0 <= ignore < classes:
            valid &= t != ignore
        t = torch.where(valid, t, classes)
        counts = torch.zeros(classes + 1, dtype=torch.float64, device=t.device)
        counts.scatter_add_(0, t, torch.ones(t.shape, dtype=torch.float64, device=t.device))
        keys = self._keys.get((site, classes))
        if keys is None:
            keys = self._keys[(site, classes)] = [f"{site}.{c}" for c in range(classes)]
        rec.defer(step, LOSS_INPUT_LABELS, counts[:classes], keys=keys, reduce=_add)

    def _describe(
        self,
        rec: Recorder,
        step: int,
        site: int,
        fn: str,
        inp: torch.Tensor,
        tgt: torch.Tensor,
        classes: int | None,
        cdim: int,
        names: list[str],
        node: Any,
        opts: dict[str, Any],
    ) -> None:
        shapes = (site, tuple(inp.shape[1:]), tuple(tgt.shape[1:]), str(tgt.dtype))
        if shapes in self._described or self._events >= MAX_EVENTS:
            return
        self._described.add(shapes)
        self._events += 1
        src = user_source_with_code(skip=1) or {}
        where = call_site()
        facts: dict[str, Any] = {
            "site": site,
            "fn": fn,
            "input_shape": list(inp.shape),
            "input_dtype": str(inp.dtype).replace("torch.", ""),
            "values_dtype": values_dtype(inp),
            "target_shape": list(tgt.shape),
            "target_dtype": str(tgt.dtype).replace("torch.", ""),
            "target_float": bool(tgt.is_floating_point()),
            "classes": classes,
            "class_dim": cdim if classes is not None else None,
            "producer": names,
            "options": {k: v for k, v in opts.items() if isinstance(v, int | float | str | bool)},
            "source": src.get("source") or (f"{relpath(where[0])}:{where[1]}" if where else None),
            "code": src.get("code"),
        }
        if tuple(inp.shape) != tuple(tgt.shape):
            try:
                out = torch.broadcast_shapes(inp.shape, tgt.shape)
                facts["broadcast_shape"] = list(out)
            except RuntimeError:
                facts["broadcast_shape"] = None
        if node is not None and type(node).__name__ in _SOFTMAX:
            result = _saved(node, "_saved_result")
            if isinstance(result, torch.Tensor) and result.dim() > 0:
                dim = _dim(_saved(node, "_saved_dim"), result.dim())
                if dim is not None:
                    facts["softmax_dim_size"] = int(result.shape[dim])
        ctx = self.ctx
        facts["layout"] = layout(inp, ctx.param_names if ctx is not None else None)
        clamp = clamp_node(node)
        if clamp is not None and classes is not None:
            # The logits clamped at 0 (TD521): the op, and the layer whose output it clamps.
            below = _below_views(clamp)
            module = _weight_module(below, ctx.param_names) if below is not None and ctx else None
            facts["clamp"] = {"op": type(clamp).__name__, "module": module}
        rec.event(step, "loss_input", **facts)

    def _describe_reversed(
        self, rec: Recorder, step: int, fn: str, inp: torch.Tensor, tgt: torch.Tensor
    ) -> None:
        """A `loss_call_reversed` event: an elementwise loss whose target (2nd argument) is the
        one that requires grad, with both shapes; once per site and shapes."""
        site = self._site(fn)
        shapes = ("reversed", site, tuple(inp.shape[1:]), tuple(tgt.shape[1:]))
        if shapes in self._described or self._events >= MAX_EVENTS:
            return
        self._described.add(shapes)
        self._events += 1
        src = user_source_with_code(skip=1) or {}
        where = call_site()
        try:
            out: list[int] | None = list(torch.broadcast_shapes(inp.shape, tgt.shape))
        except RuntimeError:
            out = None
        rec.event(
            step,
            "loss_call_reversed",
            site=site,
            fn=fn,
            # As the loss sees them: the prediction is the target argument.
            input_shape=list(inp.shape),
            target_shape=list(tgt.shape),
            broadcast_shape=out,
            source=src.get("source") or (f"{relpath(where[0])}:{where[1]}" if where else None),
            code=src.get("code"),
        )

    def _stats(
        self,
        fn: str,
        inp: torch.Tensor,
        tgt: torch.Tensor,
        cdim: int,
        classes: int | None,
        index_target: bool,
        ignore: int,
        node: Any,
        opts: dict[str, Any],
    ) -> dict[str, torch.Tensor]:
        x = inp.detach()
        out: dict[str, torch.Tensor] = {}
        if x.numel() == 0 or not x.is_floating_point():
            return out
        out["in_min"] = x.amin()
        out["in_max"] = x.amax()
        out["nonfinite"] = (~torch.isfinite(x)).float().mean()
        if classes is not None and x.dim() >= 1:
            # Probabilities along the class dim: every row sums to 1.
            out["rowsum_dev"] = (x.float().sum(cdim) - 1).abs().amax()
            if fn == "nll_loss":
                # Log-probabilities along the class dim: every row's logsumexp is 0 (one
                # normalized over another dim, the batch or the graph's nodes, is not).
                out["lse_dev"] = torch.logsumexp(x.float(), cdim).abs().amax()
        if classes is not None:
            out.update(_clamped_logits(x, node, tgt, cdim, classes, index_target, ignore))
        if fn == "ctc_loss" and x.dim() in (2, 3):
            # (T, N, C) or (T, C) log-probabilities over the last dim (no class count is
            # recorded: its targets are label sequences, not one class per row).
            out["lse_dev"] = torch.logsumexp(x.float(), -1).abs().amax()
        if index_target and tgt.numel():
            t = tgt.detach().reshape(-1).long()
            keep = t != ignore
            big = torch.iinfo(torch.int64).max
            out["t_min"] = torch.where(keep, t, torch.full_like(t, big)).amin()
            out["t_max"] = torch.where(keep, t, torch.full_like(t, -big)).amax()
            if opts.get("reduction") in (2, "sum"):
                # A summed loss is normalized by the caller: by how many targets (TD515
                # compares the divisor with this count).
                out["n_valid"] = keep.sum()
            if tgt.dim() == 2 and tgt.shape[0] >= 2 and tgt.shape[1] >= 4:
                out.update(_padding(tgt.detach().long()))
        elif tgt.is_floating_point() and tgt.numel():
            y = tgt.detach()
            out["t_min"] = y.amin()
            out["t_max"] = y.amax()
            out["t_mean"] = y.float().mean()
            # Mean square: a regression loss scales with its targets' (TD210 tells a loss that
            # rose with its targets' scale from one that climbed away).
            out["t_ms"] = y.float().square().mean()
            out["t_frac"] = (y != torch.round(y)).float().mean()
            if fn == "cross_entropy" and classes is not None and tgt.shape == x.shape:
                # Class-probability targets: every row sums to 1 along the class dim. Multi-hot
                # rows (several labels) sum to their label count (TD511).
                rows = y.float().sum(cdim)
                out["t_rowsum_min"] = rows.amin()
                out["t_rowsum_max"] = rows.amax()
                out["t_rows_multi"] = (rows > 1.5).float().mean()
        if fn == "binary_cross_entropy" and tgt.shape == x.shape:
            # Elements at 0 or 1 with the other target: the loss's own log clamp (-100) makes
            # them a constant 100, and the sigmoid in front passes them no gradient.
            y = tgt.detach()
            at = ((x == 0) | (x == 1)) & (x != y)
            out["clamped"] = at.float().mean()
            out["outside_01"] = ((x < 0) | (x > 1)).float().mean()
        if fn in _REGRESSION and node is not None and tgt.is_floating_point():
            bounds = _RANGES.get(type(node).__name__)
            if bounds is not None and tuple(tgt.shape) == tuple(x.shape) and tgt.numel() >= 2:
                out.update(_out_of_range(fn, tgt.detach(), bounds))
        if fn == "poisson_nll_loss" and opts.get("log_input") is False:
            out["log_arg_nonpos"] = (x <= 0).float().mean()
        elif node is not None and type(node).__name__ in _LOGS:
            arg = _saved(node, "_saved_self")
            if isinstance(arg, torch.Tensor) and arg.numel():
                out["log_arg_nonpos"] = (arg.detach() <= 0).float().mean()
        return out


# Elementwise regression losses whose best prediction of a target is the target itself.
_REGRESSION = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")
# The range of the values an op can output (TD522): a prediction made by one cannot reach a
# target outside it.
_RANGES = {
    "ReluBackward0": (0.0, float("inf")),
    "SigmoidBackward0": (0.0, 1.0),
    "TanhBackward0": (-1.0, 1.0),
    "SoftplusBackward0": (0.0, float("inf")),
    "ExpBackward0": (0.0, float("inf")),
}


def _out_of_range(fn: str, tgt: torch.Tensor, bounds: tuple[float, float]) -> dict:
    """Targets of a regression loss against the range of the op that made its prediction
    (TD522): `rng_out`, the share of the targets outside it; `rng_floor`, the loss the
    closest reachable prediction (each target clamped into the range) still pays, per
    element: a floor no training removes; `rng_base`, the loss of predicting the targets'
    mean, per element, to compare it with; `rng_omin`/`rng_omax`, the extremes of the targets
    outside. Squared distances for mse_loss, Huber (delta 1,
    the defaults of smooth_l1_loss and huber_loss) for those two, absolute for l1_loss."""
    y = tgt.float()
    lo, hi = bounds
    d = (lo - y).clamp(min=0)
    if hi != float("inf"):
        d = d + (y - hi).clamp(min=0)
    c = (y - y.mean()).abs()
    if fn == "mse_loss":
        floor, base = d.square(), c.square()
    elif fn == "l1_loss":
        floor, base = d, c
    else:
        floor = torch.where(d < 1, 0.5 * d.square(), d - 0.5)
        base = torch.where(c < 1, 0.5 * c.square(), c - 0.5)
    out = d > 0
    none = ~out.any()
    return {
        "rng_out": out.float().mean(),
        "rng_floor": floor.mean(),
        "rng_base": base.mean(),
        # The smallest and largest target outside the range (0 when none is): equal, one
        # value marks them (-1 for a missing label), which a mask may drop after the loss.
        "rng_omin": torch.where(out, y, float("inf")).amin().masked_fill(none, 0.0),
        "rng_omax": torch.where(out, y, float("-inf")).amax().masked_fill(none, 0.0),
    }


# Ops that clamp their input at 0 from below (relu, relu6, clamp(min=0), hardtanh(0, x)).
_CLAMPS = frozenset({"ReluBackward0", "ClampBackward1", "ClampMinBackward0", "HardtanhBackward0"})


def _at_zero(node: Any) -> torch.Tensor | None:
    """Where the output of a clamp-at-0 node is at 0 (bool, from its saved tensors), or None
    when the node is no such clamp or its saved tensors cannot be read."""
    name = type(node).__name__
    if name not in _CLAMPS:
        return None
    if name == "ReluBackward0":
        out = _saved(node, "_saved_result")
        return out == 0 if isinstance(out, torch.Tensor) else None
    low = _saved(node, "_saved_min_val" if name == "HardtanhBackward0" else "_saved_min")
    if not isinstance(low, int | float) or isinstance(low, bool) or low != 0:
        return None  # a clamp at another floor (or only from above)
    x = _saved(node, "_saved_self")
    return x <= 0 if isinstance(x, torch.Tensor) else None


def _below_views(node: Any) -> Any:
    """The first non-view node under `node` (down its first input)."""
    node = _first_input(node)
    for _ in range(12):
        if node is None or type(node).__name__ not in _VIEWS:
            return node
        node = _first_input(node)
    return None


def clamp_node(node: Any) -> Any:
    """The clamp-at-0 op (relu, relu6, clamp(min=0)) that made a class loss's input: the
    input's own producer, or the op under a log_softmax of it (`log_softmax(relu(fc(x)))`
    into nll_loss). None otherwise. Host metadata only."""
    if node is None:
        return None
    name = type(node).__name__
    if name in _CLAMPS:
        return node
    if name == "LogSoftmaxBackward0":
        below = _below_views(node)
        if below is not None and type(below).__name__ in _CLAMPS:
            return below
    return None


def _clamped_logits(
    x: torch.Tensor,
    node: Any,
    tgt: torch.Tensor,
    cdim: int,
    classes: int,
    index_target: bool,
    ignore: int,
) -> dict[str, torch.Tensor]:
    """For a class loss whose logits a clamp at 0 made (TD521): the share of the logits at 0
    (`clamp_zero`), of the rows whose every logit is 0 (`clamp_rows`: a uniform prediction
    that passes no gradient), and of the valid class-index targets whose own logit is 0
    (`clamp_tgt`: the clamp passes that logit no gradient to rise)."""
    clamp = clamp_node(node)
    zero = _at_zero(clamp) if clamp is not None else None
    if zero is None or zero.numel() != x.numel() or zero.device != x.device:
        return {}
    zero = zero.reshape(x.shape)
    out = {"clamp_zero": zero.float().mean(), "clamp_rows": zero.all(cdim).float().mean()}
    if index_target and tgt.dim() == x.dim() - 1 and tgt.device == x.device:
        t = tgt.detach().long()
        keep = (t >= 0) & (t < classes) & (t != ignore)
        at = zero.gather(cdim, t.clamp(0, classes - 1).unsqueeze(cdim)).squeeze(cdim) & keep
        out["clamp_tgt"] = at.sum().double() / keep.sum().clamp(min=1)
    return out


def _padding(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Padding in (batch, time) class targets (TD518): the last target most rows end with, the
    share of rows that end with it, the tokens of its trailing runs over all targets,
    its occurrences outside those runs (padding has none), and the runs' shortest and longest
    length among the rows that end with it (padding varies with each row's length)."""
    last = t[:, -1]
    # The middle of the sorted last targets: the value most rows end with whenever more than
    # half share one (what the rule requires); sort runs on every device, torch.mode does not.
    pad = last.sort().values[last.numel() // 2]
    ends = last == pad
    same = t == pad
    run = same.flip(1).to(torch.int32).cumprod(1).sum(1)
    run = torch.where(ends, run, torch.zeros_like(run))
    return {
        "pad_val": pad,
        "pad_rows": ends.float().mean(),
        "pad_share": run.sum().double() / t.numel(),
        "pad_inner": (same.sum() - run.sum()).double() / t.numel(),
        "pad_rmin": torch.where(ends, run, torch.full_like(run, t.shape[1])).amin(),
        "pad_rmax": run.amax(),
    }


MAX_GRAPH_NODES = 20_000  # nodes walked back from a loss input for its token ids (TD520)


def _copied_ids(
    inp: torch.Tensor, tgt: torch.Tensor, ignore: int, found: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """(batch, time) class targets (or their (batch*time,) flattening) against the token ids an
    `nn.Embedding` of the same graph read (its backward node's saved indices, same size):
    `ids_same`, the share of the valid targets equal to the id at their own position (a model
    trained to output what it reads), `ids_next`, the share equal to the next position's id
    (targets shifted for next-token prediction). `causal_attn` 1 when an attention of the graph is causal (`is_causal`, or a
    mask over the strict upper triangle): each position sees its own input there, so same-
    position targets are copied, not predicted. `found` (optional) receives the embeddings'
    backward nodes read unshifted, with their (B, L) ids and the targets' offset in them
    (`nodes`), and `unsafe`, a node under which no extra backward may run (next_token_leak)."""
    out: dict[str, torch.Tensor] = {}
    root = inp.grad_fn
    seen: set[Any] = set()
    stack = [(root, False)]
    ids: list[torch.Tensor] = []
    moved: list[torch.Tensor] = []  # ids of embeddings reached through a shift
    wide: list[tuple[torch.Tensor, bool]] = []  # (B, L) ids longer than the targets' time
    grid: list[torch.Tensor] = []  # the (B, T) ids of flattened (B*T,) targets, as read
    slices: set[tuple[int, int, int, int]] = set()  # (B, L, start, end) time slices
    causal = False
    while stack and len(seen) < MAX_GRAPH_NODES:
        node, shifted = stack.pop()
        if node is None or (node, shifted) in seen:
            continue
        seen.add((node, shifted))
        kind = type(node).__name__
        # An embedding reached through a cat/pad/roll off its feature dim may be shifted
        # along time (image-gpt's `cat([sos, tok(x)[:-1]])`, a decoder's teacher forcing
        # written on the embeddings): its ids are not the inputs read at the targets'
        # positions. Equal to the targets, they are the next-token read (ids_next).
        shifted = shifted or _shifts(node, kind)
        if found is not None:
            if "unsafe" not in found and unsafe_node(node, kind):
                found["unsafe"] = kind
            if ("Softmax" in kind and "Log" not in kind) or (
                "DotProduct" in kind and "Attention" in kind
            ):
                found["attn"] = True
        if kind == "EmbeddingBackward0":
            saved = _saved(node, "_saved_indices")
            if isinstance(saved, torch.Tensor) and (
                tuple(saved.shape) == tuple(tgt.shape)
                or (tgt.dim() == 1 and saved.dim() == 2 and saved.numel() == tgt.numel())
            ):  # (B*T,) targets of flattened logits: reshaped
                (moved if shifted else ids).append(saved.reshape(tgt.shape))
                if saved.dim() == 2 and not shifted:
                    grid.append(saved)
                    if found is not None:
                        found.setdefault("nodes", []).append((node, saved, 0))
            elif isinstance(saved, torch.Tensor) and saved.dim() == 2:
                wide.append((saved, shifted, node))
        elif kind == "SliceBackward0":
            cut = _time_slice(node)
            if cut is not None:
                slices.add(cut)
        elif "DotProduct" in kind and "Attention" in kind and not causal:
            causal = bool(_saved(node, "_saved_is_causal")) or _causal_mask(
                _saved(node, "_saved_attn_mask")
            )
        stack.extend((f, shifted) for f, _ in node.next_functions)
    if found is not None and stack and len(seen) >= MAX_GRAPH_NODES:
        found.setdefault("unsafe", "a graph too large to walk")
    offset = None
    for x, shifted, enode in wide:
        # Ids read over more positions than the targets cover (`cat([bos, x])`), the logits
        # cut to the targets' length by one slice along time (`logits[:, 1:]`): the ids at
        # the positions the slice keeps are the ones each logit read.
        b, n = x.shape
        if tgt.numel() % b or tgt.numel() // b >= n:
            continue
        starts = {c[2] for c in slices if c[:2] == (b, n) and c[3] - c[2] == tgt.numel() // b}
        if len(starts) == 1:
            offset = starts.pop()
            kept = x[:, offset : offset + tgt.numel() // b].reshape(tgt.shape)
            (moved if shifted else ids).append(kept)
            if found is not None and not shifted:
                found.setdefault("nodes", []).append((enode, x, offset))
    if not ids:
        return out
    t = tgt.detach().long()
    keep = t != ignore
    n = keep.sum().clamp(min=1)
    best_same = best_next = None
    for x in ids:
        if x.device != t.device:
            continue
        x = x.long()
        same = ((t == x) & keep).sum() / n
        nxt = ((t[..., :-1] == x[..., 1:]) & keep[..., :-1]).sum()
        nxt = nxt / keep[..., :-1].sum().clamp(min=1)
        best_same = same if best_same is None else torch.maximum(best_same, same)
        best_next = nxt if best_next is None else torch.maximum(best_next, nxt)
    for x in moved:
        if best_next is not None and x.device == t.device:
            best_next = torch.maximum(best_next, ((t == x.long()) & keep).sum() / n)
    if best_same is None:
        return out
    flipped = _flattened_flipped(inp, t, keep, grid)
    if flipped is not None:
        out["ids_next_t"] = flipped.double()
    out["ids_same"] = best_same.double()
    out["ids_next"] = best_next.double()
    out["causal_attn"] = torch.tensor(1.0 if causal else 0.0, dtype=torch.float64)
    if offset is not None:
        out["ids_offset"] = torch.tensor(float(offset), dtype=torch.float64)
    return out


def _flattened_flipped(
    inp: torch.Tensor, t: torch.Tensor, keep: torch.Tensor, ids: list[torch.Tensor]
) -> torch.Tensor | None:
    """For (N*T,) targets beside logits flattened from (N, T, C) whose (N, T) is the shape
    of the ids an embedding read (N != T): the share of the targets that are the next ids when
    the targets are read in the other order, (T, N) flattened (`y.t().reshape(-1)` beside
    `logits.reshape(-1, C)`), or None."""
    node = inp.grad_fn
    if t.dim() != 1 or node is None or type(node).__name__ not in _RESHAPES:
        return None
    sizes = _sizes(_saved(node, "_saved_self_sym_sizes"))
    if sizes is None:
        return None
    if len(sizes) != 3 or sizes[0] == sizes[1] or sizes[0] * sizes[1] != t.numel():
        return None
    n, m = sizes[0], sizes[1]
    best = None
    for x in ids:
        if x.device != t.device:
            continue
        if tuple(x.shape) != (n, m):
            continue  # ids read in another layout than the logits': no order to compare
        x = x.long()
        tt, kk = t.view(m, n).t(), keep.view(m, n).t()  # the targets read as (T, N)
        share = ((tt[:, :-1] == x[:, 1:]) & kk[:, :-1]).sum() / kk[:, :-1].sum().clamp(min=1)
        best = share if best is None else torch.maximum(best, share)
    return best


def _smoothed_tokens(fn: str, inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor | None:
    """The (N,) token ids of a kl_div's (N, V) target distributions (each row's argmax; -100
    for an all-zero row), or None for other losses and shapes."""
    if fn != "kl_div" or inp.dim() != 2 or tuple(tgt.shape) != tuple(inp.shape):
        return None
    if not tgt.is_floating_point() or inp.shape[0] < 8 or inp.shape[1] < 2:
        return None
    top, hard = tgt.detach().max(dim=1)
    return hard.masked_fill(top <= 0, -100)


def _time_slice(node: Any) -> tuple[int, int, int, int] | None:
    """(B, L, start, end) of a unit-step slice along dim 1 of a tensor of 3 dims or more (the
    time of (batch, time, features) logits), or None."""
    sizes = _sizes(_saved(node, "_saved_self_sym_sizes"))
    if sizes is None:
        return None
    if len(sizes) < 3 or _dim(_saved(node, "_saved_dim"), len(sizes)) != 1:
        return None
    if _saved(node, "_saved_step") != 1:
        return None
    start, end = _saved(node, "_saved_start"), _saved(node, "_saved_end")
    if not isinstance(start, int) or not isinstance(end, int):
        return None
    n = sizes[1]
    start, end = _signed(start), _signed(end)
    start, end = (v + n if v < 0 else v for v in (start, end))
    start, end = max(0, min(start, n)), max(0, min(end, n))
    return (sizes[0], n, start, end) if end > start else None


OWN_ROWS = 64  # leading examples compared with their own argmax (any subset shows the fault)


def _own_argmax(inp: torch.Tensor, tgt: torch.Tensor, cdim: int, ignore: int) -> dict:
    """`own_argmax`: the share of the valid class-index targets (of the first `OWN_ROWS`
    examples) equal to the argmax of the loss input over its class dim, i.e. to the model's
    own prediction; `own_n`: how many valid targets were compared."""
    if tgt.dim() == 0:
        return {}
    x, t = inp.detach()[:OWN_ROWS], tgt.detach()[:OWN_ROWS].long()
    if x.dim() != t.dim() + 1 or x.dim() <= cdim or x.shape[cdim] < 2:
        return {}
    pred = x.argmax(cdim)
    if pred.shape != t.shape:
        return {}
    keep = t != ignore
    n = keep.sum()
    # Targets built without the model, whose argmax may match them from the first step (a
    # contrastive loss's positives: all 0 (MoCo) or arange(N) (CLIP, SimCLR), easy at init):
    # constant or mostly consecutive rows, told by `own_plain` 0.
    flat = t[keep] if t.dim() else t.reshape(1)
    steps = flat[1:] - flat[:-1]
    plain = (flat != flat[:1]).any() & ((steps == 1).float().mean() < 0.5)
    return {
        "own_argmax": ((pred == t) & keep).sum() / n.clamp(min=1),
        "own_n": n,
        "own_plain": plain.double(),
    }


def _shifts(node: Any, kind: str) -> bool:
    """Whether a graph node can move values along a dim other than the last (features): a
    cat or roll, or a constant pad of a leading dim."""
    if kind == "CatBackward0":
        dim = _saved(node, "_saved_dim")
        return not (isinstance(dim, int) and dim in (-1, 2**64 - 1))  # -1 reads unsigned
    if kind == "ConstantPadNdBackward0":
        pad = _saved(node, "_saved_pad")
        return not (isinstance(pad, tuple) and not any(pad[2:]))
    return kind == "RollBackward0"


def _causal_mask(mask: Any) -> bool:
    """A square attention mask that masks every position after the query (-inf or a large
    negative for a float mask, False for a boolean one) and none on the diagonal."""
    if not isinstance(mask, torch.Tensor) or mask.dim() < 2 or mask.shape[-1] != mask.shape[-2]:
        return False
    n = mask.shape[-1]
    if n < 2:
        return False
    m = mask.detach()
    blocked = ~m if m.dtype == torch.bool else m < -1e4
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=m.device), diagonal=1)
    eye = torch.eye(n, dtype=torch.bool, device=m.device)
    return bool(blocked[..., upper].all()) and not bool(blocked[..., eye].any())


def _normalization(
    fn: str, inp: torch.Tensor, tgt: torch.Tensor, names: list[str], opts: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """How far `inp` is from a (log-)probability distribution along each dim: the largest
    |logsumexp - 0| (log space) or |sum - 1| (probabilities) over the slices, as `lnorm<d>` /
    `pnorm<d>`; for a float target of the same shape, `tnorm<d>` alike (its all-zero slices,
    masked positions, left out). Only for inputs made
    by a softmax/log_softmax, and for the log-probability inputs of nll_loss/kl_div."""
    head = names[0] if names else None
    if head in ("LogSoftmaxBackward0", *_LOGS):
        space = "l"
    elif head == "SoftmaxBackward0":
        space = "p"
    elif fn in LOG_INPUT_LOSSES:
        space = "l"
    else:
        return {}
    x = inp.detach()
    if x.dim() < 2 or not x.is_floating_point() or x.numel() == 0:
        return {}
    dims = [d for d in range(min(x.dim(), MAX_NORM_DIMS)) if x.shape[d] > 1]
    if len(dims) < 2:
        return {}  # one dim to normalize over: nothing to confuse it with
    x = x.float()
    out: dict[str, torch.Tensor] = {}
    for d in dims:
        if space == "l":
            out[f"lnorm{d}"] = torch.logsumexp(x, d).abs().amax()
        else:
            out[f"pnorm{d}"] = (x.sum(d) - 1).abs().amax()
    if tgt.is_floating_point() and tgt.shape == inp.shape:
        y = tgt.detach().float()
        log_target = fn == "kl_div" and bool(opts.get("log_target"))
        for d in dims:
            if log_target:
                dev = torch.logsumexp(y, d)
            else:
                # An all-zero slice is a masked position (label smoothing zeroes the pad
                # rows' targets): it adds nothing to the loss and is no distribution.
                dev = (y.sum(d) - 1).masked_fill(y.abs().amax(d) == 0, 0)
            out[f"tnorm{d}"] = dev.abs().amax()
    return out

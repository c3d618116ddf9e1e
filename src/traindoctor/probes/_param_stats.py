"""Per-parameter work shared by the grads, params and numerics probes on a sampled step.

On models of thousands of parameter tensors, a Python loop over the parameters costs ~1 us a
tensor for each attribute it reads (`p.grad`, `p.device`, ...), and each probe walked them
several times a sampled step (~300 ms a sampled step on 10,000 tensors). Here:

- `Held`: an optimizer's watched, trainable params with their names, rebuilt only when a
  signature read in C (`map`) changes: the ids and requires_grad flags of its tensors, or the
  names (`names_version`, bumped where `ctx.param_names` is rewritten);
- `norms`: one fused norm pass over many tensors, as one 1-D tensor per device (no 0-d
  tensor per param to stack): a flat copy normed a row per tensor on the CPU, `_foreach_norm`
  elsewhere;
- `GradNorms`: the gradient probe's norms at an optimizer's pre-step, taken once by the
  numerics probe in the same event (its finiteness check needs no second pass).

The values are the ones the probes measured before; only how often Python touches each
parameter changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, is_not, itemgetter
from typing import Any

import torch

from ..distributed.dtensor import local_all

# Many small CPU tensors: one flat copy and segment sums instead of per-tensor foreach ops,
# whose CPU fallback pays a dispatch and an allocation per tensor.
FLAT_MIN_TENSORS = 256
FLAT_MAX_ELEMENTS = 2**22  # the float64 squares stay under 32 MB
FLAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

GRAD = attrgetter("grad")
REQUIRES_GRAD = attrgetter("requires_grad")
_DTYPE = attrgetter("dtype")
_LAYOUT = attrgetter("layout")
_KIND = attrgetter("dtype", "is_cpu", "layout")
_SHAPE = attrgetter("shape")
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})
_NUMEL = torch.Tensor.numel
_ELEMENT_SIZE = torch.Tensor.element_size


def present(values: list[Any]) -> list[bool]:
    """Which of `values` are not None (in C: an `is` per item, no Python frame)."""
    return list(map(is_not, values, [None] * len(values)))


class Held:
    """One optimizer's watched, trainable params (the order of its param groups) and the other
    tensors it holds (not watched, or frozen): what `AttachContext.optimizer_params` returns,
    kept while the signature holds (the ids and flags of its tensors, the names' version)."""

    __slots__ = ("names", "params", "others", "signature")

    def __init__(
        self,
        names: list[str],
        params: list[torch.Tensor],
        others: list[torch.Tensor],
        signature: tuple[Any, ...],
    ) -> None:
        self.names = names
        self.params = params
        self.others = others
        self.signature = signature

    def pairs(self) -> list[tuple[str, torch.Tensor]]:
        return list(zip(self.names, self.params))


@dataclass(slots=True)
class GradNorms:
    """The gradient probe's ||grad|| of the params an optimizer is about to step.

    `parts`: (device, 1-D norms) in the order of `params` grouped by device; `complete`: every
    gradient of the optimizer that the numerics probe would check (strided, not None) is in
    them and nothing else is."""

    params: list[torch.Tensor]
    parts: list[tuple[torch.device, torch.Tensor]]
    complete: bool

    def by_id(self) -> dict[int, torch.Tensor]:
        """id(param) -> 0-d norm (the slow path of a reader that needs them one by one)."""
        out: dict[int, torch.Tensor] = {}
        groups: dict[torch.device, list[torch.Tensor]] = {}
        for p in self.params:
            groups.setdefault(p.grad.device if p.grad is not None else p.device, []).append(p)
        for device, norms in self.parts:
            for p, n in zip(groups.get(device, []), norms.unbind()):
                out[id(p)] = n
        return out


class ParamStats:
    """The per-parameter state the three probes share, one per AttachContext (`shared`)."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._held: dict[int, Held] = {}
        self._grad_norms: dict[int, GradNorms] = {}
        # Bumped by whoever rewrites ctx.param_names (the params probe): names re-read then.
        self.names_version = 0
        self._last: tuple[torch.optim.Optimizer, int, Held] | None = None
        # The flat lengths of a Held's params as the params probe found them this event.
        self._lengths: tuple[Held, int, list[int] | None] | None = None

    def held_now(self, opt: torch.optim.Optimizer, step: int) -> Held:
        """`held(opt)` as the params probe found it earlier in this same optimizer pre-step
        event (`mark`: nothing runs between the two handlers), else checked again."""
        last, self._last = self._last, None
        if last is not None and last[0] is opt and last[1] == step:
            return last[2]
        return self.held(opt)

    def held(self, opt: torch.optim.Optimizer) -> Held:
        tensors = list(chain.from_iterable(g["params"] for g in opt.param_groups))
        names = self._ctx.param_names
        signature = (
            tuple(map(id, tensors)),
            tuple(map(REQUIRES_GRAD, tensors)),
            (id(names), len(names), self.names_version),
        )
        cached = self._held.get(id(opt))
        if cached is not None and cached.signature == signature:
            return cached
        kept_names, kept, others = [], [], []
        for p, rg, name in zip(tensors, signature[1], map(names.get, signature[0])):
            if rg and name is not None:
                kept_names.append(name)
                kept.append(p)
            else:
                others.append(p)
        held = self._held[id(opt)] = Held(kept_names, kept, others, signature)
        return held

    def mark(self, opt: torch.optim.Optimizer, step: int, held: Held) -> None:
        """What the params probe read for `opt` at its pre-step of `step` (see held_now)."""
        self._last = (opt, step, held)

    def held_lengths(self, held: Held, step: int) -> list[int] | None:
        """`flat_lengths(held.params)`, read once per step and Held (the params probe's copy
        and the gradient probe's norms of the same list, one event: ~8 ms a read on 10,000
        tensors). Gradients have their params' shapes, dtypes and devices (torch checks every
        one set), so these are their lengths too where all are present, strided and plain."""
        cached = self._lengths
        if cached is not None and cached[0] is held and cached[1] == step:
            return cached[2]
        lengths = flat_lengths(held.params)
        self._lengths = (held, step, lengths)
        return lengths

    def share_grad_norms(self, opt: torch.optim.Optimizer, norms: GradNorms) -> None:
        self._grad_norms[id(opt)] = norms

    def take_grad_norms(self, opt: torch.optim.Optimizer) -> GradNorms | None:
        """Taken once: a later step of the same optimizer has new gradients."""
        return self._grad_norms.pop(id(opt), None)

    def forget(self, key: int) -> None:
        """The optimizer of id `key` was freed (a zero-code sweep's trial, Doctor._dropped):
        its index entry holds its params no more (a later one may reuse the id)."""
        self._held.pop(key, None)
        self._grad_norms.pop(key, None)
        self._last = None
        self._lengths = None

    def clear(self) -> None:
        """Forget every tensor held (at detach: the model may outlive nothing of ours)."""
        self._held.clear()
        self._grad_norms.clear()
        self._last = None
        self._lengths = None


def shared(ctx: Any) -> ParamStats:
    """The ParamStats of this attach (created by the first probe that asks)."""
    stats = ctx.__dict__.get("_param_stats")
    if stats is None:
        stats = ctx.__dict__["_param_stats"] = ParamStats(ctx)
    return stats


def flat_lengths(tensors: list[torch.Tensor]) -> list[int] | None:
    """Each tensor's numel where `tensors` can be copied into one flat CPU tensor (many small
    strided CPU tensors of one floating dtype, none empty, FLAT_MAX_ELEMENTS in all); None
    otherwise (per-tensor foreach ops are as cheap there). Checked in C, no loop in Python."""
    if len(tensors) < FLAT_MIN_TENSORS:
        return None
    kinds = set(map(_KIND, tensors))  # one pass: (dtype, is_cpu, layout) of each
    if len(kinds) != 1:
        return None
    dtype, is_cpu, layout = next(iter(kinds))
    if dtype not in FLAT_DTYPES or not is_cpu or layout is not torch.strided:
        return None
    if not _PLAIN.issuperset(map(type, tensors)):
        return None  # subclasses (DTensor, ...) keep their own norm
    lengths = list(map(_NUMEL, tensors))
    if 0 in lengths or sum(lengths) > FLAT_MAX_ELEMENTS:
        return None
    return lengths


class Packing:
    """How `pack` lays many small tensors out in one flat tensor: the tensors of one shape
    stacked together, group after group (`torch.stack` of equal shapes copies without a view
    per tensor: ~4 ms for 10,000 tensors where `flatten_dense_tensors` took ~20 ms). Each
    tensor's elements stay contiguous and in their order, one row of its group; `norms` norms
    the rows and `restore` puts per-tensor results back in the tensors' order."""

    __slots__ = ("lengths", "groups", "inverse", "total")

    def __init__(self, tensors: list[torch.Tensor], lengths: list[int]) -> None:
        by_shape: dict[Any, list[int]] = {}
        for i, shape in enumerate(map(_SHAPE, tensors)):
            by_shape.setdefault(shape, []).append(i)
        self.lengths = lengths
        # (picks the group's tensors, its first tensor's index, count, shape, flat position)
        self.groups: list[tuple[Any, int, int, torch.Size, int]] = []
        order: list[int] = []
        pos = 0
        for shape, idx in by_shape.items():
            pick = itemgetter(*idx) if len(idx) > 1 else _one(idx[0])
            self.groups.append((pick, idx[0], len(idx), shape, pos))
            pos += len(idx) * lengths[idx[0]]
            order.extend(idx)
        self.total = pos
        if order == list(range(len(order))):
            self.inverse: torch.Tensor | None = None  # already in the tensors' order
        else:
            inverse = [0] * len(order)
            for packed, i in enumerate(order):
                inverse[i] = packed
            self.inverse = torch.tensor(inverse)

    def pack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """One new flat tensor holding `tensors` (the shapes this packing was made for)."""
        flat = torch.empty(self.total, dtype=tensors[0].dtype)
        with torch.no_grad():
            for pick, first, count, shape, pos in self.groups:
                if tensors[first].shape != shape:
                    # (torch.stack checks that a group's tensors agree, not that they still
                    # have the shape of its slice of `flat`)
                    raise RuntimeError("packing: the shapes changed")
                n = count * _numel(shape)
                torch.stack(pick(tensors), out=flat[pos : pos + n].view(count, *shape))
        return flat

    def restore(self, values: torch.Tensor) -> torch.Tensor:
        """Per-segment `values` (packed order) in the tensors' order."""
        return values if self.inverse is None else values.index_select(0, self.inverse)

    def norms(self, flat: torch.Tensor) -> torch.Tensor:
        """||t|| of each packed tensor, in the tensors' order, as float32: each group's rows
        (one tensor each, equal lengths) normed in float64 by one reduction (no overflow of
        the squares where the values are finite). A model has a few shapes: a few ops, where
        a segment sum over 10,000 segments took ~4x as long."""
        parts = []
        for _, _, count, shape, pos in self.groups:
            rows = flat[pos : pos + count * _numel(shape)].view(count, -1)
            parts.append(torch.linalg.vector_norm(rows, 2, dim=1, dtype=torch.float64))
        return self.restore((torch.cat(parts) if len(parts) > 1 else parts[0]).float())


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _one(i: int) -> Any:
    def pick(tensors: list[torch.Tensor]) -> tuple[torch.Tensor]:
        return (tensors[i],)

    return pick


_packings: list[Packing] = []  # the last two (a model's params, and its grads' subset)


def packing(tensors: list[torch.Tensor], lengths: list[int]) -> Packing:
    """The Packing of tensors of these numels, made again only when the numels change (a
    model's shapes rarely do); `pack` checks each group's shapes (torch.stack raises)."""
    for known in _packings:
        if known.lengths == lengths:
            return known
    made = Packing(tensors, lengths)
    _packings[:] = [made, *_packings[:1]]
    return made


def pack(tensors: list[torch.Tensor], lengths: list[int]) -> tuple[torch.Tensor, Packing]:
    """`tensors` copied into one flat tensor (see Packing), and its packing."""
    made = packing(tensors, lengths)
    try:
        return made.pack(tensors), made
    except RuntimeError:  # equal numels, other shapes: group them again
        made = Packing(tensors, lengths)
        _packings[:] = [made, *_packings[:1]]
        return made.pack(tensors), made


def nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(map(int.__mul__, map(_NUMEL, tensors), map(_ELEMENT_SIZE, tensors)))


def norms(
    tensors: list[torch.Tensor], like: list[int] | None = None
) -> list[tuple[torch.device, torch.Tensor]]:
    """||t|| of each tensor as float32, one 1-D tensor per device (in the order of `tensors`
    grouped by device), from one fused pass: no 0-d tensor per tensor is left to stack.
    `like`: the flat lengths of tensors of the same shapes, dtypes and devices (a list of
    gradients, those of their params: `ParamStats.held_lengths`), where all are strided."""
    if like is not None and _PLAIN.issuperset(map(type, tensors)):
        lengths: list[int] | None = like
    else:
        lengths = flat_lengths(tensors)
    with torch.no_grad():
        if lengths is not None:
            flat, made = pack(tensors, lengths)
            return [(flat.device, made.norms(flat))]
        each = torch._foreach_norm(local_all(tensors))  # one fused kernel per device
        groups: dict[torch.device, list[torch.Tensor]] = {}
        for n in each:
            groups.setdefault(n.device, []).append(n)
        return [(d, torch.stack(ns).float()) for d, ns in groups.items()]


def keyed(
    names: list[str], tensors: list[torch.Tensor], parts: list[Any] | None = None
) -> list[list[str]]:
    """`names` split as `norms` splits `tensors` by device (one list: the usual case, and
    always when `norms` gave one part: no device is read then)."""
    if parts is not None and len(parts) == 1:
        return [names]
    devices = set(map(attrgetter("device"), tensors))
    if len(devices) <= 1:
        return [names]
    groups: dict[torch.device, list[str]] = {}
    for n, t in zip(names, tensors):
        groups.setdefault(t.device, []).append(n)
    return list(groups.values())

"""Cut lineage: where the loss code cuts the gradient, and whether the cut reaches the loss.

`CutTracker` is a `TorchFunctionMode` that GradPathProbe pushes only on the sampled walk steps,
from the end of the model's forward to the backward (the loss code). Every torch call in that
window passes through it once; it never changes a call (same function, same arguments, run
once, its result returned as is) and reads only host metadata (`requires_grad`, dtype, `id`,
`numel`, `data_ptr`): no device sync.

A *cut* is a call whose tensor input requires grad but whose tensor output does not:
`.detach()`, `.data`, `argmax`/`argmin` (and the index output of `max`/`topk`/`sort`),
integer/bool casts, comparisons, or any op run under `torch.no_grad()`. The call's user line
is its *origin*. Lineage propagates: a call whose inputs are cut-derived and none carries a
live graph produces cut-derived outputs (a numpy round-trip is followed when the tensor that
comes back shares memory with the one that left: `torch.from_numpy(t.detach().numpy())`).

What is reported is only a cut that reaches the loss: a cut-derived tensor added (add/sub) to
a tensor with a live graph into a scalar (a loss term); a cut-derived loss part logged with
`doc.log(parts=...)` is recorded too, to name that term. Masks,
metrics, teacher targets, indices into `gather` end in tensors with a live graph, or nowhere,
and stay silent. `.item()`/`.tolist()` return Python objects, so lineage ends there: their
values are kept only as a weak hint (a logged part or an added number equal to one).
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .. import _mode_stack, _patches, _source
from .._mode_stack import TorchFunctionOff, UsersOff, dispatch_len, dispatch_modes_off

# How a gradient was cut, by origin kind. TD302 reports the first group (the value was
# detached on purpose or by accident), TD301 the second (an op without a derivative); the
# rules keep their own copies (they never import torch-side modules), tested equal.
DETACH_KINDS = ("detach", "data", "no_grad")
OP_KINDS = ("argmax", "index", "int_cast", "compare", "op")

_ADDITIVE = frozenset(
    {"add", "sub", "add_", "sub_", "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__"}
    | {"__isub__", "rsub"}
)
# Ops that put their inputs side by side: a cut-derived input stacked beside a live one and
# summed in (`torch.stack([main, aux.detach()]).sum()`) is a loss term like an added one.
_JOIN = frozenset({"stack", "cat", "concat", "concatenate"})
_DETACH = frozenset({"detach", "detach_"})
_ARGMAX = frozenset({"argmax", "argmin"})
# Ops whose integer output is an index into their input.
_INDEX = frozenset({"max", "min", "topk", "sort", "argsort", "kthvalue", "mode", "median"})
_CASTS = frozenset({"long", "int", "short", "char", "byte", "bool", "to", "type", "type_as"})
_COMPARE = frozenset(
    {"gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal", "less_equal"}
    | {"__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__", "isclose", "equal"}
    | {"isnan", "isinf", "isfinite", "isposinf", "isneginf", "signbit", "logical_not"}
    | {"logical_and", "logical_or", "logical_xor"}
)
# Outputs that carry no value of the input (shape or dtype only): never a cut.
_CONSTANT = frozenset(
    {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like"}
    | {"randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}
)
_NUMPY_EXIT = frozenset({"numpy", "__array__"})
_NUMPY_ENTRY = frozenset({"tensor", "as_tensor", "asarray"})
_ITEM = frozenset({"item", "tolist"})
# A running sum's start (`lbox = torch.zeros(1); lbox += part`, YOLOv5's loss): its add has a
# None input in the graph, as a detached term's has, but a start of 0 adds nothing to the loss.
_ZERO_FACTORIES = frozenset({"zeros", "zeros_like", "new_zeros"})
_INPLACE_ADDITIVE = frozenset({"add_", "sub_", "__iadd__", "__isub__"})
ZERO_CHECK_NUMEL = 64  # CPU tensors up to this size are read to tell a zero start (no sync)

# Property reads whose result carries no value of the tensor (and `.grad`: never part of a
# loss's lineage), passed through at once: a loop over 10,000 params reading `.grad` and
# `.requires_grad` goes through this mode on a walk step. `.data`, `.T`, `.real`... are followed.
_GETTER = type(torch.Tensor.grad.__get__)
_METADATA = frozenset(
    getattr(torch.Tensor, name)
    for name in ("grad", "requires_grad", "_version", "grad_fn", "is_leaf", "shape", "dtype")
    + ("device", "layout", "ndim", "is_cuda")
)

MAX_LINEAGE = 20_000  # tensors tracked at once (weak references only)
MAX_ORIGINS = 256
MAX_ITEMS = 64
MAX_CONSTANTS = 16  # lines where a Python number is added to the loss, reported
MAX_SOURCES = 32  # nodes a cut value is known to come from (a straight-through's, see _from)
MAX_HELD = 8  # scalar adds held per (cut line, add line) until the backward says which are terms

_TORCH_DIR = _source.TORCH_DIR
_PKG_DIR = _source.PKG_DIR
_THIS_FILE = __file__
# The experiments' loss-code recorder, a mode that may sit above this one on the captured
# steps: a call passed on by it is still the user's.
_PASS_ON = (_THIS_FILE, os.path.join(_PKG_DIR, "experiments", "loss_code.py"))
_INTERNAL = ("internal",)  # a call made by traindoctor itself


def _caller() -> tuple[str, int] | tuple[str] | None:
    """The user's (file, line) of the current torch call, `_INTERNAL` when traindoctor itself
    made it, None when no user frame is on the stack."""
    frame = sys._getframe(1)
    for _ in range(48):
        if frame is None:
            return None
        name = frame.f_code.co_filename
        if frame.f_code in _patches.DATA_CODES:
            pass  # traindoctor's `.data` property: the read is the caller's
        elif name not in _PASS_ON and not name.startswith(_TORCH_DIR):
            if _source.is_user_file(name):
                return name, frame.f_lineno
            if name.startswith(_PKG_DIR):
                return _INTERNAL
        frame = frame.f_back
    return None


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, list | tuple):
            for b in a[:64]:
                if isinstance(b, torch.Tensor):
                    yield b
    for a in kwargs.values():
        if isinstance(a, torch.Tensor):
            yield a


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [o for o in out[:64] if isinstance(o, torch.Tensor)]
    return []


def _kind(name: str, func: Any, out: torch.Tensor) -> str | None:
    """How `func` cut the gradient of its output, or None when it is no cut."""
    if name in _DETACH:
        return "detach"
    if name == "__get__":
        # Property reads: only `.data` detaches (`.grad`, `.T`, `.requires_grad`... do not).
        return (
            "data" if getattr(getattr(func, "__self__", None), "__name__", "") == "data" else None
        )
    if name in _CONSTANT:
        return None
    floating = out.is_floating_point() or out.is_complex()
    if name in _ARGMAX:
        return "argmax"
    if name in _INDEX and not floating:
        return "index"
    if name in _CASTS and not floating:
        return "int_cast"
    if name in _COMPARE:
        return "compare"
    if not torch.is_grad_enabled():
        return "no_grad"
    return "op"


class CutTracker(TorchFunctionMode):
    """Records cut origins, their lineage and the cuts that reach the loss (see module doc).

    `start()` pushes the mode, `stop()` removes it (from wherever it sits on the mode stack);
    facts that reach the loss go to `on_cut(fact)` as host-only dicts. The lineage outlives
    `stop()` (weakly), so that `doc.log(parts=...)` after the backward can still be traced.
    """

    def __init__(self, on_cut: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self.on_cut = on_cut
        self.active = False
        self.error: BaseException | None = None
        self._lineage: dict[int, tuple[weakref.ref, int, bool]] = {}
        # Cut-derived tensor id -> the autograd nodes its value was detached from (the detached
        # tensor's node and that node's inputs): a straight-through estimator adds the cut
        # value back to one of them (`soft + (hard - soft).detach()`), on purpose. The nodes
        # are held (they take no weak reference) so that their ids stay theirs, only while
        # the window is open: stop() drops them.
        self._from: dict[int, dict[int, Any]] = {}
        self._origins: list[dict[str, Any]] = []
        self._origin_index: dict[tuple[str, str, str], int] = {}
        # data_ptr of a cut tensor read into numpy -> (the array, weakly; origin). A tensor made
        # from the array keeps it alive; once it is gone the memory may hold another tensor.
        self._exits: dict[int, tuple[weakref.ref, int]] = {}
        self._items: dict[float, str] = {}  # value of a user `.item()` -> its line
        self._sinks: dict[int, tuple[weakref.ref, str]] = {}  # operand id -> line it was added
        self._reported: set[tuple[Any, ...]] = set()
        self._constants: set[str] = set()  # lines adding a Python number to a live scalar
        self._zero_starts: dict[int, weakref.ref] = {}  # zeros made in the window, by id
        self._zero_before = False  # the in-place add being observed started from zeros
        # A scalar add of a cut tensor to a live one, held with its autograd node until the
        # backward: it is a loss term only if the loss sums it in (`confirm`). An ODE solver
        # run after the model's forward adds a no_grad step size to a live time (`t1 = t0 +
        # dt`): a scalar add with a cut operand that the loss never sums.
        self._held: dict[tuple[Any, ...], tuple[dict[str, Any], list[Any]]] = {}
        self.calls = 0  # torch calls seen (for the cost measurements)

    # -- window ---------------------------------------------------------------------------
    def start(self) -> bool:
        """Push the mode at the bottom of the mode stack (see _mode_stack: the activations
        probe's mode and a user's `with torch.device(...)` then come and go above it)."""
        if self.active:
            return False
        _mode_stack.push_bottom(self)
        self.reset()
        self.active = True
        return True

    def stop(self) -> None:
        """Take the mode off the stack, wherever it is (modes pushed above it stay)."""
        if not self.active:
            return
        self.active = False
        self._from.clear()
        _mode_stack.remove(self)

    def reset(self) -> None:
        self._lineage.clear()
        self._from.clear()
        self._origins.clear()
        self._origin_index.clear()
        self._exits.clear()
        self._items.clear()
        self._sinks.clear()
        self._zero_starts.clear()
        self._held.clear()

    # -- the mode -------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if type(func) is _GETTER and func.__self__ in _METADATA:
            return func(*args)  # `.grad`, `.requires_grad`, ...: nothing to follow (see above)
        if kwargs is None:
            kwargs = {}
        if self.active and args and getattr(func, "__name__", "") in _INPLACE_ADDITIVE:
            # In place, the start is gone once the call ran: read it now (CPU, small only).
            with UsersOff():
                self._zero_before = self._zeros(args[0])
        out = func(*args, **kwargs)
        if self.active and self.error is None and not torch.compiler.is_compiling():
            try:
                # Unseen by the user's tensor subclasses and modes (_mode_stack.UsersOff, inline:
                # this runs for every op of an observed forward).
                with TorchFunctionOff():
                    if dispatch_len():
                        with dispatch_modes_off():
                            self._observe(func, args, kwargs, out)
                    else:
                        self._observe(func, args, kwargs, out)
            except Exception as exc:  # noqa: BLE001 - a fact is lost, never the user's call
                self.error = exc
        return out

    def _observe(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        self.calls += 1
        name = getattr(func, "__name__", "")
        cut: tuple[int, bool] | None = None  # (origin, via numpy) of the first cut-derived input
        live = False  # an input carries a graph that is not cut-derived
        sources: dict[int, Any] = {}  # of the cut-derived inputs (see _from)
        for t in _tensors(args, kwargs):
            hit = self._lookup(t)
            if hit is not None:
                cut = cut or hit
                sources.update(self._from.get(id(t), ()))
            elif t.requires_grad:
                live = True
            elif self._exits and cut is None:
                origin = self._exit(_ptr(t))
                if origin is not None:
                    cut = (origin, True)
        if name in _ITEM:
            if live and isinstance(out, float) and len(self._items) < MAX_ITEMS:
                self._item(out)
            return
        if name in _NUMPY_EXIT:
            if cut is not None and args and isinstance(args[0], torch.Tensor):
                ptr = _ptr(args[0])
                try:
                    if ptr > 0:
                        self._exits[ptr] = (weakref.ref(out), cut[0])
                except TypeError:  # an array type without weak references: not followed
                    pass
            return
        if self._exits and cut is None and name in _NUMPY_ENTRY and args:
            origin = self._exit(_array_ptr(args[0]))
            if origin is not None:
                cut = (origin, True)
        if name in _ZERO_FACTORIES and isinstance(out, torch.Tensor) and not out.requires_grad:
            if len(self._zero_starts) < MAX_LINEAGE:
                self._zero_starts[id(out)] = weakref.ref(out)
            return
        if live and (name in _ADDITIVE or (name in _JOIN and cut is not None)):
            self._sink(name, args, kwargs, out, cut, sources)
        outs = _outputs(out)
        if not outs:
            return
        if cut is not None and not live:
            for o in outs:
                self._mark(o, cut, sources)
            return
        if not live:
            return
        for o in outs:
            if o.requires_grad:  # (in place: a cut tensor that now carries a live graph)
                self._lineage.pop(id(o), None)
                continue
            if cut is not None:  # a live and a cut input, no graph out (no_grad): still cut
                self._mark(o, cut, {**sources, **_nodes(args, kwargs)})
                continue
            kind = _kind(name, func, o)
            if kind is None:
                continue
            origin = self._origin(kind, name)
            if origin is not None:
                self._mark(o, (origin, False), _nodes(args, kwargs))

    # -- lineage --------------------------------------------------------------------------
    def _lookup(self, t: torch.Tensor) -> tuple[int, bool] | None:
        entry = self._lineage.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        return entry[1], entry[2]

    def _exit(self, ptr: int) -> int | None:
        entry = self._exits.get(ptr)
        if entry is None or entry[0]() is None:
            return None
        return entry[1]

    def _mark(
        self, t: torch.Tensor, cut: tuple[int, bool], sources: dict[int, Any] | None = None
    ) -> None:
        if len(self._lineage) >= MAX_LINEAGE:
            self._lineage = {k: v for k, v in self._lineage.items() if v[0]() is not None}
            self._from = {k: v for k, v in self._from.items() if k in self._lineage}
            if len(self._lineage) >= MAX_LINEAGE:
                return
        self._lineage[id(t)] = (weakref.ref(t), cut[0], cut[1])
        if sources and self.active:
            self._from[id(t)] = sources if len(sources) <= MAX_SOURCES else {}
        else:
            self._from.pop(id(t), None)

    def _origin(self, kind: str, op: str) -> int | None:
        where = _caller()
        if where is None or where is _INTERNAL:
            return None
        source = f"{_source.relpath(where[0])}:{where[1]}"
        key = (kind, op, source)
        index = self._origin_index.get(key)
        if index is None:
            if len(self._origins) >= MAX_ORIGINS:
                return None
            index = len(self._origins)
            code = _source.line_text(where[0], where[1])
            self._origins.append({"cut": kind, "cut_op": op, "cut_at": source, "cut_code": code})
            self._origin_index[key] = index
        return index

    def _item(self, value: float) -> None:
        where = _caller()
        if where is None or where is _INTERNAL or value == 0.0:
            return
        self._items.setdefault(value, f"{_source.relpath(where[0])}:{where[1]}")

    # -- cuts that reach the loss ---------------------------------------------------------
    def _sink(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
        cut: tuple[int, bool] | None,
        sources: dict[int, Any],
    ) -> None:
        """An add/sub with a live operand: is the other operand cut-derived (or, for a scalar,
        a Python number equal to a `.item()` of the loss code)? A tensor add (`per_sample +
        aux.detach()`) or a stack/cat beside a live tensor counts only with a cut-derived
        operand, and only where the loss sums it in linearly (`confirm`): a detached target
        inside a squared error (`(q - target.detach()).pow(2)`) is not a term."""
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return
        if out.numel() != 1 and cut is None:
            return
        if cut is not None and sources and not sources.keys().isdisjoint(_nodes(args, kwargs)):
            # A straight-through estimator (`soft + (hard - soft).detach()`, `loss -
            # loss.detach()`): the cut value is added back to what it was detached from, so
            # the value is replaced while the gradient passes. Not a term that trains nothing.
            return
        operand = None
        if cut is not None:
            operand = next(
                (a for a in args if isinstance(a, torch.Tensor) and self._lookup(a) is not None),
                None,
            )
        item_at = None
        if cut is None:
            number = next((a for a in args if isinstance(a, float) and a in self._items), None)
            if number is None:
                self._constant(name, args)
                return
            item_at = self._items[number]
        where = _caller()
        if where is None or where is _INTERNAL:
            return
        added_at = f"{_source.relpath(where[0])}:{where[1]}"
        if item_at is not None:
            fact = {"cut": "item", "cut_op": "item", "cut_at": item_at, "cut_code": ""}
            numpy = False
        else:
            fact = dict(self._origins[cut[0]])
            numpy = cut[1]
            if operand is not None:
                self._sinks[id(operand)] = (weakref.ref(operand), added_at)
        fact = {**fact, "numpy": numpy, "found": "term", "added_at": added_at, "part": None}
        key = (fact["cut_at"], added_at)
        held = self._held.setdefault(key, (fact, []))[1]
        if len(held) < MAX_HELD and out.grad_fn is not None:
            held.append(out.grad_fn)  # alive until confirm(): its id cannot be reused

    def confirm(self, terms: set[int] | None) -> None:
        """At the backward: report the held adds whose node is a term of the loss (`terms`,
        the ids of the walk's nodes that the loss sums, means or scales); drop the others."""
        held, self._held = self._held, {}
        for fact, nodes in held.values():
            if terms and any(id(n) in terms for n in nodes):
                self._report(fact)

    def _zero_start(self, name: str, args: tuple[Any, ...]) -> bool:
        """Whether a tensor operand without graph is 0: made by a zeros factory in the window,
        or read as zeros (a small CPU tensor; in place, before the call)."""
        if name in _INPLACE_ADDITIVE:
            zero, self._zero_before = self._zero_before, False
            if zero:
                return True
        return any(self._zeros(a) for a in args)

    def _zeros(self, t: Any) -> bool:
        if not isinstance(t, torch.Tensor) or t.requires_grad:
            return False
        entry = self._zero_starts.get(id(t))
        return (entry is not None and entry() is t) or _cpu_zeros(t)

    def _constant(self, name: str, args: tuple[Any, ...]) -> None:
        """A Python number added to a live scalar (`(inter + eps) / (union + eps)`), or the
        zero start of a running sum (`lbox = torch.zeros(1); lbox += part`): in the graph its
        add has a None input, as a detached term's has; the line is reported so that TD302
        does not take that add for one."""
        number = any(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
        if len(self._constants) >= MAX_CONSTANTS or not (number or self._zero_start(name, args)):
            return
        where = _caller()
        if where is None or where is _INTERNAL:
            return
        added_at = f"{_source.relpath(where[0])}:{where[1]}"
        if added_at in self._constants:
            return
        self._constants.add(added_at)
        self.on_cut(
            {"cut": "constant", "cut_op": name, "cut_at": None, "cut_code": "", "numpy": False}
            | {"found": "constant", "added_at": added_at, "part": None}
        )

    def parts(self, parts: dict[str, Any]) -> None:
        """Report logged loss parts that are cut-derived (or numbers equal to a `.item()`)."""
        for part, value in parts.items():
            added_at = None
            if isinstance(value, torch.Tensor):
                hit = self._lookup(value)
                if hit is None:
                    continue
                fact = dict(self._origins[hit[0]])
                numpy = hit[1]
                sink = self._sinks.get(id(value))
                if sink is not None and sink[0]() is value:
                    added_at = sink[1]
            elif isinstance(value, float) and value in self._items:
                fact = {"cut": "item", "cut_op": "item", "cut_at": self._items[value]}
                fact["cut_code"] = ""
                numpy = False
            else:
                continue
            self._report(
                {**fact, "numpy": numpy, "found": "part", "added_at": added_at, "part": str(part)}
            )

    def _report(self, fact: dict[str, Any]) -> None:
        key = (fact["found"], fact["cut_at"], fact["added_at"], fact["part"])
        if key in self._reported or len(self._reported) >= 32:
            return
        self._reported.add(key)
        self.on_cut(fact)


def _nodes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[int, Any]:
    """The autograd nodes of the live tensor inputs and those nodes' inputs, by id (host
    metadata only)."""
    out: dict[int, Any] = {}
    for t in _tensors(args, kwargs):
        fn = t.grad_fn
        if fn is None or not t.requires_grad:
            continue
        out[id(fn)] = fn
        for nxt, _ in fn.next_functions:
            if nxt is not None:
                out[id(nxt)] = nxt
    return out


def _cpu_zeros(t: Any) -> bool:
    """A small CPU tensor without graph whose values are all 0 (read on the host: no sync)."""
    if not isinstance(t, torch.Tensor) or t.requires_grad or t.device.type != "cpu":
        return False
    if t.numel() == 0 or t.numel() > ZERO_CHECK_NUMEL or t.is_sparse:
        return False
    try:
        return not bool(t.any())
    except (RuntimeError, TypeError):  # meta tensors, subclasses without values
        return False


def _ptr(t: torch.Tensor) -> int:
    try:
        return t.data_ptr()
    except RuntimeError:  # tensors without storage (meta, some subclasses)
        return -1


def _array_ptr(a: Any) -> int:
    try:
        return a.__array_interface__["data"][0]
    except (AttributeError, KeyError, TypeError, IndexError):
        return -1

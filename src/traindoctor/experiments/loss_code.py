"""The script's loss code, recorded on the captured steps and replayed on a copy (the fix
trials of TD301/TD302: a detached or blocked term is computed by hand, after the captured
standard loss call, so replaying that call alone is not the run).

`LossRecorder` is a `TorchFunctionMode` the capture probe pushes from the end of the model's
forward to the step's first backward, on the captured steps only (experiments on). It changes
no call (each runs once, as called, its result returned as is); it writes down each torch call
whose inputs descend from the model's output or its parameters: the function, its arguments
with those tensors as references (other tensors, a target, a mask, a teacher's output, cloned
as constants), the grad mode, the user's line. The backward's root ends the trace, and only
the calls it depends on are kept (a metric, a log line, traindoctor's own reads are dropped).

`LossCode.loss(model, args, kwargs, swap)` replays it on a copy: the copy's forward, then the
recorded calls on its output and parameters, with one op swapped where the fix trial says
(`Swap`): a `.detach()`/`.data` at a line made the identity, a `torch.no_grad()` block run with
gradients, `round`/`sign`/... made straight-through, a clamp dropped, an argmax made the
expected index under the softmax. Honest by construction, or not replayed: the first trace
replayed as written on the recorded output must give the recorded loss (`verify`); a trace
that reads a value of the prediction back into the loss (`.item()`), or that uses a tensor
with a graph that is neither the model's output nor its parameters, is not replayable and
says why; a replay whose Python branch (`if loss.isnan()`) goes the other way raises.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .. import _mode_stack, _source
from ..probes.base import iter_tensors

MAX_CALLS = 4096  # recorded torch calls of one step's loss code at most
MAX_CONST_BYTES = 64 * 2**20  # constants (targets, masks, teacher outputs) cloned per trace
_INPLACE_DUNDER = frozenset(
    {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__"}
    | {"__ipow__", "__iand__", "__ior__", "__ixor__"}
)
# Calls that read a value of a tensor into Python: their result, used in the loss, is frozen.
_READS = frozenset({"item", "tolist", "__float__", "__int__", "__index__"})
_BRANCH = frozenset({"__bool__"})
# A value of the prediction leaving torch (numpy, Python), and the factories that bring one
# back: a tensor they make after such an exit, used in the loss, would be frozen by a replay.
_ADDITIVE = frozenset(
    {"add", "sub", "add_", "sub_", "rsub", "__add__", "__radd__", "__iadd__", "__sub__"}
    | {"__rsub__", "__isub__"}
)
_EXITS = _READS | {"numpy", "__array__"}
_FACTORIES = frozenset({"tensor", "as_tensor", "asarray", "from_numpy", "scalar_tensor"})


@dataclass(frozen=True)
class Swap:
    """One op of the loss code changed in the fix arm: `kind` at user line `at` (None: the
    as-written replay of the recorded loss code). Kinds: "identity" (`.detach()`, `.data`,
    a clamp dropped, an integer cast dropped: the first tensor argument returned), "grad"
    (the `torch.no_grad()` block holding the line run with gradients), "ste" (round, sign,
    floor, ceil, trunc made straight-through), "soft_argmax" (argmax/argmin: the expected
    index under the softmax)."""

    kind: str | None = None
    at: str | None = None
    ops: tuple[str, ...] = ()  # the recorded function names swapped at that line
    # Only the nth of those calls at that line (a `.detach()` of a target beside the cut's on
    # the same line stays); None: all of them.
    nth: int | None = None


AS_RECORDED = Swap()
UNCHECKED = "unchecked"


@dataclass
class Call:
    func: Any
    name: str
    args: Any  # templates: ("slot", k) / ("param", name) / ("const", k) / literals
    kwargs: Any
    outs: list[tuple[tuple[int, ...], int]]  # (path into the result, slot)
    grad: bool
    source: str | None
    block: int  # consecutive calls of one grad mode share a block (a no_grad block)
    rg: tuple[bool, ...] = ()  # whether each of `outs` required grad when recorded
    result: Any = None  # a __bool__'s recorded answer (a replay must branch the same way)


class NotReplayable(Exception):
    """The loss code cannot be replayed as the run computed it (the message says why)."""


@dataclass
class LossCode:
    """One step's recorded loss code (see the module doc)."""

    n_outputs: int
    calls: list[Call]
    consts: list[torch.Tensor]
    root: int  # the slot of the backward's root
    root_value: torch.Tensor | None = None
    # What `verify` replays: the recorded output values and the params read, and the RNG.
    outputs: list[torch.Tensor] | None = None
    params: dict[str, torch.Tensor] | None = None
    rng: torch.Tensor | None = None
    lines: list[str] = field(default_factory=list)  # the user lines of the kept calls
    out_rg: tuple[bool, ...] = ()  # whether each output of the model required grad
    checked: str | None = UNCHECKED  # `verify`'s answer, once asked (fix_branch.recorded)

    def loss(
        self, model: torch.nn.Module, args: tuple, kwargs: dict, swap: Swap = AS_RECORDED
    ) -> torch.Tensor:
        """The copy's forward on the batch, then the loss code replayed (with `swap`)."""
        outs = list(iter_tensors(model(*args, **kwargs)))
        return self.after_forward(outs, model, swap)

    def after_forward(
        self, outs: list[torch.Tensor], model: torch.nn.Module, swap: Swap = AS_RECORDED
    ) -> torch.Tensor:
        """The loss code replayed on the copy's output tensors (iter_tensors order)."""
        if len(outs) != self.n_outputs:
            raise NotReplayable("the copy's output has another number of tensors")
        return self.replay(outs, dict(model.named_parameters()), swap)

    def replay(
        self, outs: list[torch.Tensor], params: dict[str, torch.Tensor], swap: Swap = AS_RECORDED
    ) -> torch.Tensor:
        table: dict[int, Any] = dict(enumerate(outs))
        for k, c in enumerate(self.consts):
            table[-1 - k] = c.clone()
        grad_blocks = _grad_blocks(self.calls, swap)
        outer = torch.is_grad_enabled()  # a replay scored under no_grad builds no graph
        seen = 0  # calls of the swapped ops at the swap's line so far
        for call in self.calls:
            a = _decode(call.args, table, params)
            kw = _decode(call.kwargs, table, params)
            grad = outer and (call.grad or call.block in grad_blocks)
            hit = swap.kind not in (None, "grad") and _at(call, swap)
            if hit:
                hit, seen = swap.nth is None or seen == swap.nth, seen + 1
            with torch.set_grad_enabled(grad):
                result = _swapped(call, swap, a, kw) if hit else call.func(*a, **kw)
            if call.name in _BRANCH and call.result is not None and bool(result) != call.result:
                raise NotReplayable(
                    f"the loss code branches on a value at {call.source}: the replay took "
                    "the other branch"
                )
            for path, slot in call.outs:
                table[slot] = _extract(result, path)
        root = table.get(self.root)
        if not isinstance(root, torch.Tensor):
            raise NotReplayable("the backward's root was not rebuilt")
        return root if root.numel() == 1 else root.sum()

    def verify(self) -> str | None:
        """Why the recorded loss code does not reproduce the run's loss, or None when its
        replay on the recorded output gives the recorded loss."""
        if self.outputs is None or self.root_value is None:
            return "the recorded loss code has no value to check against"
        outs = [
            o.clone().requires_grad_(bool(rg) and o.is_floating_point())
            for o, rg in zip(self.outputs, self.out_rg or (True,) * len(self.outputs))
        ]
        params = {k: v.clone().requires_grad_(True) for k, v in (self.params or {}).items()}
        with torch.random.fork_rng(devices=[]):
            if self.rng is not None:
                torch.set_rng_state(self.rng)
            with torch.enable_grad(), _mode_stack.TorchFunctionOn():
                got = self.replay(outs, params).detach()
        want = self.root_value.reshape(()) if self.root_value.numel() == 1 else None
        if want is None:
            want = self.root_value.sum()
        if not torch.allclose(got.double(), want.double(), rtol=1e-5, atol=1e-7):
            return (
                f"the recorded loss code gives {float(got):.7g}, not the run's loss "
                f"{float(want):.7g}: it is not replayed"
            )
        return None

    def nbytes(self) -> int:
        """Bytes of the copies this trace keeps (its constants, the checked output)."""
        kept = [*self.consts, *(self.outputs or ()), *(self.params or {}).values()]
        return sum(t.numel() * t.element_size() for t in kept)

    def find(self, ops: frozenset[str] | set[str], at: str) -> list[Call]:
        """The kept calls of these functions at user line `at`."""
        return [c for c in self.calls if c.name in ops and c.source == at]

    def cut_into(self, at: str) -> Swap | None:
        """Where the gradient of a term added at line `at` was cut (a detached term seen in
        the graph only): back from that add through the tensors without graph to the
        `.detach()`/`.data` that made one, or the call run under no_grad on a tensor with
        one. None when the value comes from elsewhere (a constant, numpy, `.item()`)."""
        producer = {slot: c for c in self.calls for _, slot in c.outs}
        rg = dict(enumerate(self.out_rg))
        for c in self.calls:
            rg.update({slot: r for (_, slot), r in zip(c.outs, c.rg)})
        for add in self.calls:
            if add.source != at or add.name not in _ADDITIVE:
                continue
            stack = [k for k in _slots_in((add.args, add.kwargs)) if k >= 0 and not rg.get(k)]
            seen: set[int] = set()
            while stack:
                k = stack.pop()
                p = producer.get(k)
                if k in seen or p is None:
                    continue
                seen.add(k)
                ins = [i for i in _slots_in((p.args, p.kwargs)) if i >= 0]
                live = any(rg.get(i) for i in ins) or any(
                    r.kind == "param" for r in _refs((p.args, p.kwargs))
                )
                if p.name in ("detach", "detach_", "data") and live and p.source:
                    ops = ("data",) if p.name == "data" else ("detach", "detach_")
                    swap = Swap("identity", p.source, ops)
                    nth = next(i for i, c in enumerate(self.calls_at(swap)) if c is p)
                    return Swap("identity", p.source, ops, nth)
                if not p.grad and live and p.source:
                    return Swap("grad", p.source)
                stack += [i for i in ins if not rg.get(i)]
        return None

    def calls_at(self, swap: Swap) -> list[Call]:
        """The kept calls a swap of any occurrence would change, in order."""
        return [c for c in self.calls if _at(c, swap)]

    def consumers(self, call: Call) -> list[Call]:
        """The kept calls that read an output of `call`."""
        slots = {s for _, s in call.outs}
        return [c for c in self.calls if slots & _slots_in((c.args, c.kwargs))]


def _grad_blocks(calls: list[Call], swap: Swap) -> set[int]:
    if swap.kind != "grad":
        return set()
    return {c.block for c in calls if not c.grad and c.source == swap.at}


def _at(call: Call, swap: Swap) -> bool:
    return call.source == swap.at and call.name in swap.ops


def _swapped(call: Call, swap: Swap, a: tuple, kw: dict) -> Any:
    x = next((t for t in a if isinstance(t, torch.Tensor)), None)
    if x is None:
        return call.func(*a, **kw)
    if swap.kind == "identity":
        return x
    if swap.kind == "ste":
        hard = call.func(*a, **kw)
        return x + (hard - x).detach()
    if swap.kind == "soft_argmax":
        dim = kw.get("dim", a[1] if len(a) > 1 else None)
        keep = bool(kw.get("keepdim", a[2] if len(a) > 2 else False))
        if dim is None:
            raise NotReplayable("an argmax over the flattened tensor has no soft twin")
        z = -x if call.name == "argmin" else x
        n = x.shape[dim]
        shape = [1] * x.dim()
        shape[dim] = n
        idx = torch.arange(n, dtype=x.dtype, device=x.device).reshape(shape)
        return (z.softmax(dim) * idx).sum(dim, keepdim=keep)
    raise NotReplayable(f"unknown swap {swap.kind}")


def _decode(obj: Any, table: dict[int, Any], params: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, _Ref):
        if obj.kind == "param":
            p = params.get(obj.key)
            if p is None:
                raise NotReplayable(f"the copy has no parameter {obj.key}")
            return p
        return table[obj.key]
    if isinstance(obj, tuple):
        return tuple(_decode(o, table, params) for o in obj)
    if isinstance(obj, list):
        return [_decode(o, table, params) for o in obj]
    if isinstance(obj, dict):
        return {k: _decode(v, table, params) for k, v in obj.items()}
    return obj


def _extract(result: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        result = result[i]
    return result


def _slots_in(obj: Any) -> set[int]:
    if isinstance(obj, _Ref):
        return {obj.key} if obj.kind == "slot" else set()
    if isinstance(obj, tuple | list):
        return set().union(*(_slots_in(o) for o in obj)) if obj else set()
    if isinstance(obj, dict):
        return _slots_in(tuple(obj.values()))
    return set()


@dataclass(frozen=True)
class _Ref:
    kind: str  # "slot" (an output of the model or of a recorded call; constants < 0), "param"
    key: Any


def _is_inplace(name: str, kwargs: dict) -> bool:
    if "out" in kwargs:
        return True
    if name in _INPLACE_DUNDER:
        return True
    return name.endswith("_") and not name.endswith("__")


def _caller() -> str | None:
    """`path:line` of the innermost user frame of the current torch call."""
    found = _source.call_site(48)
    return f"{_source.relpath(found[0])}:{found[1]}" if found else None


class LossRecorder(TorchFunctionMode):
    """Records one step's loss code (see the module doc). `start(outputs, model)` pushes it,
    `finish(root)` takes it off and returns the `LossCode` (or raises NotReplayable);
    `abort(reason)` takes it off and keeps the reason. It never changes a call."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.reason: str | None = None
        self.check = False  # keep what `LossCode.verify` replays (the first captured step)
        self.rng: torch.Tensor | None = None  # the CPU RNG at the start (`LossCode.verify`)
        # id(tensor) -> (a weak reference to it, its slot): the loss code's tensors die when
        # the script drops them, as without the recorder (a dead one's id may come back).
        self._values: dict[int, tuple[weakref.ref, int]] = {}
        self._params: dict[int, tuple[str, torch.Tensor]] = {}
        self._calls: list[Call] = []
        self._consts: list[torch.Tensor] = []
        self._const_bytes = 0
        self._slot = 0
        self._block = 0
        self._last_grad: bool | None = None
        self._reads: dict[float, str | None] = {}  # a value read into Python -> its line
        self._rg: dict[int, bool] = {}  # slot -> it required grad when last made or written
        self._suspect: dict[int, str] = {}  # const slots made from values that left torch
        self._exited = False  # a value of the prediction left torch (numpy, .item())
        self._made: dict[int, tuple[weakref.ref, str | None]] = {}  # tensors made after it
        self._n_outputs = 0
        self._out_rg: tuple[bool, ...] = ()
        self._outputs: list[torch.Tensor] = []

    def start(self, outputs: list[torch.Tensor], model: torch.nn.Module) -> None:
        self._params = {id(p): (n, p) for n, p in model.named_parameters()}
        self._n_outputs = len(outputs)
        self._out_rg = tuple(bool(o.requires_grad) for o in outputs)
        self._outputs = list(outputs) if self.check else []  # held for `verify` only
        for i, o in enumerate(outputs):
            self._values[id(o)] = (weakref.ref(o), i)
        self._slot = len(outputs)
        self.active = True
        _mode_stack.push_bottom(self)

    def stop(self) -> None:
        if self.active:
            self.active = False
            _mode_stack.remove(self)

    def abort(self, reason: str) -> None:
        self.stop()
        self.reason = self.reason or reason
        self._clear()

    def _clear(self) -> None:
        self._values.clear()
        self._params.clear()
        self._calls.clear()
        self._consts.clear()
        self._outputs = []
        self._made.clear()
        self._reads.clear()
        self._rg.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        grad = torch.is_grad_enabled()
        out = func(*args, **kwargs)
        if self.active and self.reason is None and not torch.compiler.is_compiling():
            try:
                with _mode_stack.UsersOff():  # the user's subclasses and modes do not see it
                    self._record(func, args, kwargs, out, grad)
            except NotReplayable as exc:
                self.reason = str(exc)
            except Exception as exc:  # noqa: BLE001  (a trace is lost, never the user's call)
                self.reason = f"the loss code could not be recorded ({type(exc).__name__})"
        return out

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any, grad: bool) -> None:
        name = getattr(func, "__name__", "") or ""
        if name == "__get__":
            # A property read: `.data` (a detach) named as such, the others by their name
            # (`.data` may be a Python property while traindoctor watches updates by hand).
            desc = getattr(func, "__self__", None)
            name = getattr(desc, "__name__", "") or name
            if desc is not None and desc is torch.Tensor.__dict__.get("data"):
                name = "data"
        hit = [False]
        enc_args = self._encode(args, hit, grad)
        enc_kwargs = self._encode(kwargs, hit, grad)
        if not hit[0]:
            if self._exited and name in _FACTORIES:
                for _, t in _paths(out):  # made from Python/numpy values after an exit
                    self._made[id(t)] = (weakref.ref(t), _caller())
            return  # nothing of the prediction in it: its tensors are constants if used
        if len(self._calls) >= MAX_CALLS:
            raise NotReplayable(f"the loss code makes over {MAX_CALLS} torch calls a step")
        source = _caller()
        if name in _EXITS:
            self._exited = True
        if name in _READS:
            for v in _numbers(out):
                self._reads.setdefault(v, source)
        if grad != self._last_grad:
            self._block += 1
            self._last_grad = grad
        while hasattr(func, "__wrapped__"):
            func = func.__wrapped__  # a traindoctor loss wrapper: the original
        call = Call(
            func=func,
            name=name,
            args=enc_args,
            kwargs=enc_kwargs,
            outs=[],
            grad=grad,
            source=source,
            block=self._block,
            result=bool(out) if name in _BRANCH and isinstance(out, bool) else None,
        )
        for path, t in _paths(out):
            known = self._values.get(id(t))
            if known is not None and known[0]() is t:
                call.outs.append((path, known[1]))  # in place: the same slot, rebuilt
                continue
            self._values[id(t)] = (weakref.ref(t), self._slot)
            call.outs.append((path, self._slot))
            self._slot += 1
        call.rg = tuple(bool(t.requires_grad) for _, t in _paths(out))
        for (_, slot), rg in zip(call.outs, call.rg):
            self._rg[slot] = rg
        self._calls.append(call)

    def _encode(self, obj: Any, hit: list[bool], grad: bool, depth: int = 0) -> Any:
        if isinstance(obj, torch.Tensor):
            known = self._values.get(id(obj))
            if known is not None and known[0]() is obj:
                hit[0] = hit[0] or known[1] >= 0  # a constant's slot is no prediction
                if obj.requires_grad and not self._rg.get(known[1], True):
                    # It got a graph that no recorded call gave it: a custom autograd
                    # Function's output (its forward's ops run without grad, as recorded).
                    raise NotReplayable(
                        "a tensor of the loss code got its graph outside torch's functions "
                        "(a custom autograd.Function?): its gradient would not be replayed"
                    )
                return _Ref("slot", known[1])
            param = self._params.get(id(obj))
            if param is not None and param[1] is obj:
                hit[0] = True
                return _Ref("param", param[0])
            if obj.requires_grad and grad:
                raise NotReplayable(
                    "the loss code uses a tensor with a graph that is neither the model's "
                    "output nor its parameters (another model's, or a second forward's)"
                )
            return self._const(obj)
        if depth > 4:
            return obj
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self._encode(o, hit, grad, depth + 1) for o in obj)
        if isinstance(obj, list):
            return [self._encode(o, hit, grad, depth + 1) for o in obj]
        if isinstance(obj, dict):
            return {k: self._encode(v, hit, grad, depth + 1) for k, v in obj.items()}
        return obj

    def _const(self, t: torch.Tensor) -> _Ref:
        """A tensor the prediction does not reach: cloned once, a slot of its own (an in-place
        write into it by the loss code is replayed on the clone)."""
        made = self._made.get(id(t))
        size = t.numel() * t.element_size()
        self._const_bytes += size
        if self._const_bytes > MAX_CONST_BYTES:
            raise NotReplayable("the loss code's constants are too large to keep")
        self._consts.append(t.detach().clone())
        key = -len(self._consts)
        if made is not None and made[0]() is t:
            self._suspect[key] = made[1] or "?"  # it may hold a value of the prediction
        self._values[id(t)] = (weakref.ref(t), key)
        return _Ref("slot", key)

    def finish(self, root: torch.Tensor) -> LossCode:
        """The trace that ends at the backward's `root` (only the calls it depends on)."""
        self.stop()
        try:
            if self.reason is not None:
                raise NotReplayable(self.reason)
            known = self._values.get(id(root))
            if known is None or known[0]() is not root or known[1] < 0:
                raise NotReplayable("the backward's root does not come from the model's output")
            calls = _live(self._calls, known[1])
            frozen = self._frozen_in(calls)
            if frozen is not None:
                raise NotReplayable(
                    f"the loss code reads a value of the prediction into Python (at {frozen}) "
                    "and uses it in the loss: a replay would freeze it"
                )
            used = {r.key for c in calls for r in _refs((c.args, c.kwargs)) if r.kind == "param"}
            code = LossCode(
                n_outputs=self._n_outputs,
                calls=calls,
                consts=list(self._consts),
                root=known[1],
                root_value=root.detach().clone(),
                lines=list(dict.fromkeys(c.source for c in calls if c.source)),
                out_rg=self._out_rg,
            )
            if self.check:
                # What `verify` replays, when small enough to keep a copy of (the first
                # trace only): the output values, the params the loss code read, the RNG.
                keep = [*self._outputs, *(p for n, p in self._params.values() if n in used)]
                if sum(t.numel() * t.element_size() for t in keep) <= MAX_CONST_BYTES:
                    code.rng = self.rng
                    code.outputs = [o.detach().clone() for o in self._outputs]
                    code.params = {
                        n: p.detach().clone() for n, p in self._params.values() if n in used
                    }
            return code
        finally:
            self._clear()

    def _frozen_in(self, calls: list[Call]) -> str | None:
        """The line of a value of the prediction read into Python or numpy and fed back into
        the kept calls (as a number, or a tensor made from it), or None."""
        for c in calls:
            for r in _refs((c.args, c.kwargs)):
                if r.kind == "slot" and r.key in self._suspect:
                    return self._suspect[r.key]
        if not self._reads:
            return None
        for c in calls:
            for v in _numbers((c.args, c.kwargs)):
                if v in self._reads:
                    return self._reads[v] or "?"
        return None


def _live(calls: list[Call], root: int) -> list[Call]:
    """The calls the root depends on: those that make a needed slot, or write into one."""
    needed = {root}
    keep = []
    for c in reversed(calls):
        made = {s for _, s in c.outs}
        ins = _slots_in((c.args, c.kwargs))
        kw = c.kwargs if isinstance(c.kwargs, dict) else {}
        if made & needed or (_is_inplace(c.name, kw) and ins & needed):
            keep.append(c)
            needed |= ins
    keep.reverse()
    return keep


def _refs(obj: Any) -> list[_Ref]:
    if isinstance(obj, _Ref):
        return [obj]
    if isinstance(obj, tuple | list):
        return [r for o in obj for r in _refs(o)]
    if isinstance(obj, dict):
        return _refs(tuple(obj.values()))
    return []


def _paths(out: Any, prefix: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, tuple | list) and len(prefix) < 2:
        found = []
        for i, o in enumerate(out[:64]):
            found += _paths(o, (*prefix, i))
        return found
    return []


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        v = float(obj)
        return [v] if math.isfinite(v) and v not in (0.0, 1.0) else []
    if isinstance(obj, tuple | list):
        return [v for o in obj[:64] for v in _numbers(o)]
    if isinstance(obj, dict):
        return _numbers(tuple(obj.values()))
    return []

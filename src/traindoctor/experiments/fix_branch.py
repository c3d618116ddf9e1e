"""The fix trials of a detached term (TD302) and of an op that blocks the gradient (TD301).

Both bugs live in the loss code the script writes by hand after the model's forward (the rules
judge that window), so the one captured standard loss call is not the run: these trials replay
the loss code recorded on the captured steps (loss_code.py), as written and with the one op at
the finding's line swapped. A loss written wholly by hand (no standard loss call on the output,
which the recipe calls custom code) is replayed the same way, from the batches kept with their
loss code (Setup.traced). The swaps:
- TD302: the `.detach()` / `.data` at the cut's line made the identity, or the
  `torch.no_grad()` block holding it run with gradients (the values are the same: both arms
  train and are scored on the same loss);
- TD301: `round`/`floor`/`ceil`/`trunc`/`sign` made straight-through (`x + (op(x) - x).detach()`,
  the same values); a saturating clamp dropped; an `argmax`/`argmin` whose index is used as a
  number made the expected index under the softmax; an integer cast used as a number dropped.
  Where the swap changes the loss value, both final models are scored with the loss as
  written (the script's objective).
Not run, and said why: a gradient-accumulation run (the code recorded is one micro-batch's),
no standard swap for the op (a comparison needs a temperature the script
would choose; `where`, `relu`, a mask), an index used to index, a `.item()` or numpy round-trip
(the value leaves torch), the cut's line not in the recorded loss code (inside the model's
forward), a loss code that could not be recorded or whose replay does not give the run's loss.
"""

from __future__ import annotations

from ..findings import Finding
from .fixes import FIX_NAMES, NotRun, Plan, _needs_optimizer, fix_for
from .loss_code import AS_RECORDED, UNCHECKED, LossCode, Swap
from .runner import Batch, Setup

FIX_NAMES["TD302"] = "the term computed with its graph (no detach/no_grad)"
FIX_NAMES["TD301"] = "a differentiable stand-in for the blocking op"
TRACED = frozenset({"TD301", "TD302"})  # trials that replay the recorded loss code

_DETACH_OPS = {"detach": ("detach", "detach_"), "data": ("data",)}
_STE = ("round", "floor", "ceil", "trunc", "sign")
_CLAMPS = ("clamp", "clamp_min", "clamp_max", "hardtanh")
_CLAMP_CALLS = ("clamp", "clip", "clamp_min", "clamp_max", "hardtanh", "clamp_", "clip_")
# What an argmax's index (or an integer cast's value) may feed for the swap to keep its meaning:
# arithmetic on it as a number. Used as an index (gather, indexing) or compared, it has no
# differentiable twin.
_AS_NUMBER = frozenset(
    {"float", "double", "half", "to", "type", "type_as", "squeeze", "unsqueeze", "view"}
    | {"reshape", "flatten", "add", "sub", "mul", "div", "true_divide", "rsub", "neg", "abs"}
    | {"pow", "square", "sqrt", "mean", "sum", "mse_loss", "l1_loss", "smooth_l1_loss"}
    | {"huber_loss", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__"}
    | {"__truediv__", "__rtruediv__", "__pow__", "__neg__", "__abs__"}
)


def traced(batch: Batch) -> bool:
    """Whether this batch's loss code was recorded (and can be replayed)."""
    return isinstance(batch.trace, LossCode)


def recorded(setup: Setup) -> tuple[LossCode | None, str | None]:
    """The first captured step's loss code when its replay gives the run's loss, else why
    not (checked once)."""
    batch = setup.batch or (setup.traced[0] if setup.traced else None)
    if batch is None:
        return None, "no batch was captured"
    code = batch.trace
    if not isinstance(code, LossCode):
        return None, code if isinstance(code, str) else "the loss code was not recorded"
    if code.checked is UNCHECKED:
        try:
            code.checked = code.verify()
        except Exception as exc:  # noqa: BLE001
            code.checked = f"the recorded loss code does not replay ({type(exc).__name__})"
    return (None, code.checked) if code.checked else (code, None)


def _loss_code(fix: str, setup: Setup) -> LossCode | NotRun:
    why = _needs_optimizer(setup)
    if why:
        return NotRun(fix, why)
    if setup.micro_batches > 1:
        # The loss code recorded is one micro-batch's (`loss / k` in it): a step is k of them.
        return NotRun(
            fix, f"{setup.micro_batches} micro-batches a step: the loss code of one is replayed"
        )
    code, why = recorded(setup)
    return code if code is not None else NotRun(fix, why or "the loss code was not recorded")


def _not_in_code(fix: str, at: str | None) -> NotRun:
    return NotRun(
        fix,
        f"the line {at} is not in the loss code recorded after the model's forward "
        "(inside forward(), or not run on the captured steps)",
    )


@fix_for("TD302")
def _reattach(finding: Finding, setup: Setup) -> Plan | NotRun:
    ev = finding.evidence
    cut, at = ev.get("cut"), ev.get("cut_at")
    if cut is None:
        # A part logged without graph: its cut, when one was measured.
        found = {(c.get("cut"), c.get("cut_at")) for c in (ev.get("cuts") or {}).values()}
        if len(found) == 1:
            cut, at = next(iter(found))
    fix = FIX_NAMES["TD302"]
    found = None
    if cut is None and finding.where.source:
        # Seen in the graph only (an add with an operand without graph): its cut, from the
        # recorded loss code.
        code = _loss_code(fix, setup)
        if isinstance(code, NotRun):
            return code
        found = code.cut_into(finding.where.source)
        if found is None:
            return NotRun(
                fix,
                f"the term added at {finding.where.source} has no `.detach()`/`.data`/no_grad "
                "in the recorded loss code (numpy, `.item()` or a constant): not replayed",
            )
        cut = "no_grad" if found.kind == "grad" else found.ops[0]
        at = found.at
    if cut == "detach":
        fix = f"the `.detach()` at {at} removed"
    elif cut == "data":
        fix = f"the `.data` at {at} removed"
    elif cut == "no_grad":
        fix = f"the `torch.no_grad()` block at {at} run with gradients"
    if cut not in ("detach", "data", "no_grad") or not at:
        return NotRun(fix, "the line where the gradient was cut was not measured")
    if ev.get("numpy_round_trip"):
        return NotRun(fix, "a numpy round-trip: the value leaves torch and is not replayed")
    code = _loss_code(fix, setup)
    if isinstance(code, NotRun):
        return code
    if cut == "no_grad":
        if not any(not c.grad and c.source == at for c in code.calls):
            return _not_in_code(fix, at)
        swap = Swap("grad", at)
    else:
        ops = _DETACH_OPS[cut]
        if not code.find(set(ops), at):
            return _not_in_code(fix, at)
        swap = Swap("identity", at, ops)
        # The one that feeds the term added there (not a target's detach on the same line).
        added = ev.get("added_at") or finding.where.source
        fed = found or (code.cut_into(added) if added else None)
        if fed is not None and fed.at == at and fed.ops == ops:
            swap = fed
    return Plan(fix, {"swap": AS_RECORDED}, {"swap": swap})


@fix_for("TD301")
def _stand_in(finding: Finding, setup: Setup) -> Plan | NotRun:
    ev = finding.evidence
    cut = ev.get("cut")
    op = ev.get("op") or ""
    at = ev.get("cut_at") if cut else finding.where.source
    where = f" at {at}" if at else ""
    if cut in ("argmax",) and op in ("argmax", "argmin"):
        fix = f"the expected index under the softmax instead of `{op}`{where}"
        swap, same = Swap("soft_argmax", at, (op,)), False
    elif cut == "int_cast":
        fix = f"the integer cast `{op}`{where} dropped (the value kept in floating point)"
        swap, same = Swap("identity", at, (op,)), False
    elif cut is None and op in _STE:
        fix = f"a straight-through `{op}`{where} (`x + (x.{op}() - x).detach()`)"
        swap, same = Swap("ste", at, (op,)), True
    elif cut is None and op in _CLAMPS:
        fix = f"the `{op}`{where} dropped"
        swap, same = Swap("identity", at, _CLAMP_CALLS), False
    else:
        fix = FIX_NAMES["TD301"]
        what = f"`{op}`"
        if cut == "compare":
            what = "a comparison (a soft one needs a temperature the script would choose)"
        elif cut == "index":
            what = f"the indices of `{op}`"
        return NotRun(fix, f"no standard differentiable stand-in for {what}")
    if not at:
        return NotRun(fix, "the op's line was not measured")
    code = _loss_code(fix, setup)
    if isinstance(code, NotRun):
        return code
    calls = code.find(set(swap.ops), at)
    if not calls:
        return _not_in_code(fix, at)
    if swap.kind in ("soft_argmax",) or cut == "int_cast":
        used = {c.name for call in calls for c in code.consumers(call)} - _AS_NUMBER
        if used:
            return NotRun(
                fix, f"the value of `{op}` feeds `{sorted(used)[0]}`: it is no number to smooth"
            )
    return Plan(
        fix, {"swap": AS_RECORDED}, {"swap": swap}, same_loss=same, score_as_written=not same
    )

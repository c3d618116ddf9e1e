"""TD301 gradient-blocked-by-op."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._objective import MIN_UPDATE, updates_to_initial
from .._registry import rule

# What passes gradient instead, per op (kept here: rules never import torch-side modules).
ALTERNATIVES = {
    "clamp": "drop the clamp, or bound the value smoothly (e.g. `x.tanh()` scaling); if the "
    "values are out of range, fix what produces them",
    "clamp_min": "use a smooth floor (`F.softplus`) or clamp only a denominator",
    "clamp_max": "drop the upper clamp or bound it smoothly",
    "hardtanh": "use `tanh`, which still passes a gradient when saturated",
    "where": "make the chosen branch depend on the prediction; a constant branch passes 0",
    "masked_fill": "fill with a function of the prediction, not a constant",
    "relu": "use `leaky_relu`/`softplus`, or fix the scale of its input (mostly < 0)",
    "threshold": "use `leaky_relu`/`softplus`",
    "round": "use a straight-through estimator: `x + (x.round() - x).detach()`",
    "sign": "use `tanh(x / t)` or a straight-through estimator",
    "floor": "use a straight-through estimator: `x + (x.floor() - x).detach()`",
    "ceil": "use a straight-through estimator: `x + (x.ceil() - x).detach()`",
    "trunc": "use a straight-through estimator",
    "mul": "multiply by a soft weight instead of a hard 0",
}
# Only ops whose derivative is exactly 0 on part of the domain are judged; a ReLU zeroes about
# half of its gradient in a healthy network, so it needs a much higher share (see TD303).
FRACTION = {"relu": 0.9, "threshold": 0.9}
DEFAULT_FRACTION = 0.6
MIN_SHARE = 1e-3  # the node must carry at least this share of the loss code's largest gradient

# Ops that leave no graph at all, seen by the cut tracker (probes/cuts.py, `gradient_cut`
# events) when their result reaches the loss: kind -> (why no gradient, what passes one).
NO_GRAPH = {
    "argmax": (
        "returns integer indices, which have no gradient",
        "use a differentiable surrogate: the expectation under the softmax "
        "(`(logits.softmax(-1) * values).sum(-1)`), or use the index only to gather the "
        "prediction (`logits.gather(-1, idx)`), whose gradient flows; Gumbel-softmax or a "
        "straight-through estimator if a hard choice is needed",
    ),
    "int_cast": (
        "casts to an integer (or bool) dtype, which has no gradient",
        "keep the value in floating point; if it must be rounded, use a straight-through "
        "estimator: `x + (x.round() - x).detach()`",
    ),
    "compare": (
        "is a comparison: booleans have no gradient",
        "use a soft comparison, e.g. `torch.sigmoid((x - threshold) / temperature)`",
    ),
    "op": (
        "has no derivative: its output does not require grad",
        "replace it by a differentiable surrogate, or keep it out of the loss",
    ),
}
NO_GRAPH["index"] = NO_GRAPH["argmax"]
# `torch.autograd.grad` without `create_graph=True` (forces from an energy model, torchani#238;
# a gradient penalty): the gradients it returns carry no graph.
AUTOGRAD_GRAD = (
    "returns gradients without a graph: `torch.autograd.grad` ran without `create_graph=True`",
    "pass `create_graph=True` to that `torch.autograd.grad` call (forces from an energy, a "
    "gradient penalty), so the term's gradient reaches the model's parameters",
)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _bystanders(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The usual suspects measured on the same step: nan_to_num and 0/1 mask multiplies."""
    out = []
    for n in nodes:
        if n.get("op") == "nan_to_num" or n.get("mask"):
            out.append(n)
    return out


def _bystander_text(n: dict[str, Any]) -> str:
    where = f" at {n['source']}" if n.get("source") else ""
    if n.get("op") == "nan_to_num":
        ratio = (n.get("grad_out") or 0.0) / n["grad_in"] if n.get("grad_in") else None
        r = "" if ratio is None else f", norm out/in {ratio:.2f}"
        return (
            f"`nan_to_num`{where} is not the problem: it zeroed {_pct(n.get('zeroed'))} of the "
            f"gradient through it (gradient 1 for finite elements{r})"
        )
    return (
        f"the 0/1 mask multiply{where} is not the problem: it zeroed {_pct(n.get('zeroed'))} "
        "of the gradient through it, exactly the entries where the mask is 0"
    )


@rule(
    code="TD301",
    name="gradient-blocked-by-op",
    severity=Severity.ERROR,
    summary="An op inside the loss zeroes most of the gradient passing through it.",
    requires=("params.norm", "params.update", "grads.norm", "loss.train", "loss.backward"),
    events=("gradient_cut", "gradient_path"),
    priority=12,
)
def gradient_blocked_by_op(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    On the sampled backward passes, an autograd op of the loss graph that sets most of the
    gradient passing through it to exactly zero: a saturated `clamp`/`clamp_min`/`hardtanh`,
    `torch.where`/`masked_fill` choosing a constant branch, `relu` on mostly negative input,
    `round`/`sign`/`floor`. Names the op, the fraction zeroed, its source line and what would
    pass gradient instead. A multiply by a 0/1 mask is reported as expected (info): it zeroes
    exactly the entries where the mask is 0, by design (padding, a causal mask).
    Also a loss term computed from an op that has no gradient at all and leaves no graph:
    `argmax`/`argmin` (or the indices of `max`/`topk`/`sort`), an integer cast (`.long()`,
    `.to(torch.int64)`, `.type(...)`), a comparison, added to the loss or logged as a part.

    ## Why it matters
    The elements behind such an op receive no gradient at all: the loss is computed, printed
    and may even look reasonable, but the part of the model feeding those elements does not
    learn. The loss sits on a plateau and no amount of training moves it.

    ## How it is measured
    On step 1, rarely after, and on the step after TD107/TD108 fires, the user's own backward
    runs with a hook on every autograd node of the loss graph (hooks return None: gradients
    are unchanged). Per node: the norm of the gradient flowing in and out, and the fraction of
    the elements that carried a gradient in and carry exactly 0 out. The loss code of that step
    runs under anomaly mode (metadata only), which records the line that created each node.
    `nan_to_num` is measured like any op: it passes gradient 1 to every finite element.
    Ops that leave no graph cannot be seen by the walk: the loss code of the same steps runs
    under a `TorchFunctionMode` that follows, without changing any call, which tensors descend
    from an `argmax`/integer cast/comparison of a tensor that requires grad; one that is added
    (add/sub) into the scalar loss beside a term with a live graph, or logged as a part, is
    reported with the op's line and the line that adds it. An argmax used as a metric, or as
    an index into `gather`, never reaches the loss without a graph and is not reported.
    When the walk knows the loss code's lines, only ops created there are judged (a clamp
    inside the model acts as an activation: TD303/TD304). A clamp of the scalar loss itself is
    a warning (TD107 reports the constant loss); a zeroed scalar while the parameters still
    got gradient on that step (`grads.norm`) is one term of the loss weighted by 0 (a ramp-up
    starting at 0), info; a blocker behind another one is a warning.
    A multiply is judged by where its zeros come from: each operand gets (gradient out) x (the
    other operand's value), so when both operands require grad, the side zeroed is zeroed by
    the value of a trained operand that gets its own gradient through the same op (a
    zero-initialised learnable state `r * h0`, ReZero's `alpha * f(x)` with `alpha = 0`, an
    adaLN-zero gate). That zero lasts until the operand's first update: it is not reported.
    An op whose derivative is 0 everywhere (`sign`, `round`, `floor`, `ceil`, `trunc`) on a
    value that also reaches the loss through another op (YOLO's `sign(x) * sqrt(abs(x))`) blocks
    nothing: that value gets its gradient the other way. It is not reported.
    A multiply by a constant (no grad) that is 0, or 0 x 0 (both sides zeroed), is, unless the
    op that made its other operand fills the zeros in again: when no gradient that op passes on
    has a larger share of exact zeros than the multiply received, no element behind it lost its
    gradient (a soft-target cross-entropy `-(t * F.log_softmax(z, -1)).sum(-1)` with CutMix or
    Mixup targets: the softmax's normalisation gives every logit a gradient). Not reported, nor
    as a 0/1 mask.
    An op measured blocking on one walk and passing on a later walk (same op and line) was a
    transient zero and is not reported; one blocking again is confirmed. One that has no line
    (the loss is computed inside the model's forward) and was measured on one walk only is a
    warning.
    An op that passed gradient on step 1 (before any update) and blocks on a later walk, in a
    run whose optimizer steps move the weights by a median of more than their initial norm
    (||Δθ|| / ||θ_0|| >= 1; healthy runs 0.002 to 0.06), was driven into its flat range by a
    far too high learning rate: it is info, with the measured step size and the lr as the fix.

    ## Example
    ```python
    giou = (iou - penalty).clamp(-1.0, 1.0)   # most values are below -1: gradient 0
    loss = (1 - giou).mean()
    ```

    ## Fix
    ```python
    giou = iou - penalty                      # in [-1, 1] by construction: no clamp
    loss = (1 - giou).mean()
    ```

    ## Known false positives
    A multiply by a zero that is trained but never moves (a zero parameter left out of the
    optimizer) looks like a transient zero and is not reported (TD102/TD103 report the
    parameter). A clamp that is saturated on purpose (a hinge, a margin loss that is already satisfied for
    most elements) is reported too; ignore it with `--ignore TD301` once it is meant (one
    that zeroes every element on a step whose loss is exactly 0 is an info). An
    argmax-derived term added to the loss on purpose as a constant (it changes the loss value
    only) is reported as well.
    """
    yield from _no_graph_findings(tl)
    moves = updates_to_initial(tl)
    blown = statistics.median(moves) if len(moves) >= 2 else None
    if blown is not None and blown < MIN_UPDATE:
        blown = None
    seen: set[tuple[str, str | None]] = set()
    first_blocker: dict[int, dict[str, Any]] = {}  # per walk: the blocker nearest the loss
    walks = _walks(tl)
    for e in walks:
        nodes = e.get("nodes") or []
        ref = e.get("reference_grad") or 0.0
        bystanders = _bystanders(nodes)
        for n in nodes:
            op = n.get("op")
            zeroed = n.get("zeroed")
            if zeroed is None or op not in ALTERNATIVES or not n.get("grad_in"):
                continue
            key = (op, n.get("source"))
            if key in seen:
                continue
            if n.get("refilled"):
                # A multiply by a constant whose zeros the op making its other operand fills
                # in again (soft-target cross-entropy: `-(t * log_softmax(z)).sum(-1)`).
                continue
            if n.get("mask"):
                if zeroed > 0:
                    seen.add(key)
                    yield _mask_finding(tl, e, n)
                continue
            if n.get("trained_operand") or n.get("verdict") == "zero operand (trained)":
                # `r * h0` with a zero-initialised learnable state, ReZero's `alpha * f(x)`:
                # zeroed by the value of a trained operand, which gets its own gradient.
                continue
            if not _blocks(n):
                continue
            if n.get("bypassed"):
                # `sign(x) * sqrt(abs(x))`: sign passes 0 by definition, and x gets its
                # gradient through the other factor; nothing is blocked.
                continue
            if not n.get("source") and (e.get("lines_known") or op in FRACTION):
                # Not created by the loss code (the walk knows the loss code's lines): an
                # activation-like clamp/ReLU inside the model, TD303/TD304's business.
                continue
            share = n["grad_in"] / ref if ref else 1.0
            if share < MIN_SHARE:
                continue
            again = _remeasured(walks, e, n)
            if again is False:
                continue  # a later walk measured the same op passing: the zeros were transient
            seen.add(key)
            src = n.get("source")
            upstream = first_blocker.get(id(e))
            if upstream is None:
                first_blocker[id(e)] = n
            at = f" at {src}" if src else ""
            others = [b for b in bystanders if b is not n]
            cleared = "; ".join(_bystander_text(b) for b in others)
            cause = (
                f"`{op}`{at} sets {zeroed:.1%} of the gradient passing through it to exactly "
                f"0 (measured on step {e['step']}: norm in {n['grad_in']:.3g}, out "
                f"{n.get('grad_out') or 0.0:.3g})"
                + (f". {cleared[0].upper()}{cleared[1:]}" if cleared else "")
            )
            if again is not None:
                cause += f"; again on step {again}"
            # One walk, and no line to check it against: the op may be a transient zero (a
            # multiply by a value that is 0 only at init) inside the model. Say less.
            unsure = again is None and not src
            if unsure:
                cause += (
                    "; measured on one step only, and the op's line is unknown (the loss is "
                    "computed inside the model's forward)"
                )
            scalar = (n.get("elements") or 0) <= 1
            term = scalar and _params_got_gradient(tl, e["step"])
            if term:
                # A scalar zeroed while the params still got gradient on that step: one term
                # of the loss, not the loss (a ramp-up weight that starts at 0: KL annealing,
                # a mean teacher's consistency weight). The rule cannot tell it from a weight
                # left at 0 by mistake: it says so, as info.
                cause += (
                    ". It zeroes one scalar term of the loss: the parameters still got "
                    f"gradient from the rest of the loss on step {e['step']} (a weight that is "
                    "0 on that step, such as a ramp-up starting at 0, zeroes its term only)"
                )
            elif scalar:
                cause += (
                    ". The op clamps the whole (scalar) loss: while it is active the loss is "
                    "constant and nothing trains (TD107 reports the constant loss)"
                )
            if upstream is not None:
                # Behind a blocker nearer the loss, only the few elements it lets through
                # reach this op: secondary.
                up = f"`{upstream['op']}`" + (
                    f" at {upstream['source']}" if upstream.get("source") else ""
                )
                cause += f". It lies behind {up}, which blocks first: fix that one first"
            fix = ALTERNATIVES[op]
            severity = Severity.WARNING if upstream is not None or scalar or unsure else None
            if term:
                severity = Severity.INFO
            if not term and zeroed >= 0.999 and _loss_is_zero(tl, e["step"]):
                # Every element at the clamp's floor and the loss exactly 0 on that step: a
                # hinge or margin loss already satisfied (a triplet loss on separated
                # classes) has nothing left to reduce; a loss zeroed by mistake looks the same.
                cause += (
                    f". The loss is exactly 0 on step {e['step']}: a hinge or margin loss "
                    "that is already satisfied gets no gradient by design; a loss zeroed by "
                    "mistake looks the same (TD107/TD108 report a loss that stays at 0)"
                )
                fix = (
                    "nothing, if the margin is meant to be met already; otherwise make it "
                    "harder (a larger margin, hard-example mining) or " + fix
                )
                severity = Severity.INFO
            before = _passed_before(tl, e, n) if blown is not None else None
            if before is not None:
                # It passed before the first updates and blocks after steps that moved the
                # weights by more than their own norm: the lr pushed its input out of range.
                cause += (
                    f". It passed gradient on step {before}; the optimizer steps since moved "
                    f"the weights by a median {blown:.3g}x their initial norm per step "
                    "(healthy runs: about 0.002 to 0.06): a learning rate far too high drove "
                    f"the values into the `{op}`'s flat range, which is where the damage shows"
                )
                fix = (
                    "lower the learning rate (by orders of magnitude: each step moves the "
                    f"weights by more than their own norm) or warm it up; the `{op}` is not "
                    "the cause"
                )
                severity = Severity.INFO
            yield tl.finding(
                title=(
                    f"`{op}`{at} zeroes one scalar term of the loss on step {e['step']}; the "
                    "rest of the loss trains"
                    if term
                    else f"`{op}`{at} blocks {zeroed:.0%} of the loss gradient"
                ),
                step=e["step"],
                evidence={
                    "op": op,
                    "zeroed_fraction": round(zeroed, 4),
                    "grad_in": n["grad_in"],
                    "grad_out": n.get("grad_out"),
                    "share_of_loss_gradient": round(share, 4),
                    "elements": n.get("elements"),
                    "measured_bystanders": [
                        {k: b.get(k) for k in ("op", "source", "zeroed", "grad_in", "grad_out")}
                        for b in others
                    ],
                },
                where=Where(op=op, source=src),
                cause=cause,
                fix=fix,
                confidence=0.3 if upstream is not None or unsure else min(1.0, zeroed + 0.1),
                severity=severity,
            )


def _no_graph_findings(tl: TimelineView) -> Iterator[Finding]:
    """Loss terms computed from an op without a gradient (argmax, integer casts): one finding
    per op and line, with the line that adds the term and the part it was logged as."""
    cuts = [c for c in tl.events("gradient_cut") if c.get("cut") in NO_GRAPH]
    done: set[tuple[Any, Any]] = set()
    for c in cuts:
        if c.get("found") != "term":
            continue
        key = (c.get("cut_op"), c.get("cut_at"))
        if key in done:
            continue
        done.add(key)
        parts = [
            p["part"]
            for p in cuts
            if p.get("found") == "part"
            and (p.get("cut_op"), p.get("cut_at")) == key
            and p.get("part")
        ]
        # A part alone (logged, but not seen added to the loss) only names a term: an accuracy
        # logged among the parts is no loss term.
        yield _no_graph_finding(tl, c, list(dict.fromkeys(parts)))


def _no_graph_finding(tl: TimelineView, c: dict[str, Any], parts: list[str]) -> Finding:
    op, at, added = c.get("cut_op"), c.get("cut_at"), c.get("added_at")
    why, fix = NO_GRAPH[c["cut"]]
    if c["cut"] == "op" and op == "grad":
        why, fix = AUTOGRAD_GRAD
    if parts:
        subject = f"part {', '.join(repr(p) for p in parts)} (logged via doc.log parts)"
    else:
        subject = "the loss term"
    if added:
        subject += f" added at {added}"
    return tl.finding(
        title=f"`{op}` at {at} leaves {subject} without gradient: it trains nothing",
        step=c["step"],
        evidence={
            "op": op,
            "cut": c["cut"],
            "cut_at": at,
            "cut_code": c.get("cut_code"),
            "added_at": added,
            "parts": parts,
        },
        where=Where(op=op, source=at),
        cause=f"measured on step {c['step']}: {subject} is computed from `{op}` at {at} "
        f"(`{c.get('cut_code') or '?'}`), which {why}; the term is in the loss value but "
        "passes no gradient to the prediction",
        fix=fix,
        confidence=0.9,
    )


def _mask_finding(tl: TimelineView, e: dict[str, Any], n: dict[str, Any]) -> Finding:
    src = n.get("source")
    at = f" at {src}" if src else ""
    return tl.finding(
        title=f"0/1 mask multiply{at} zeroes {n['zeroed']:.0%} of its gradient: expected",
        step=e["step"],
        evidence={
            "op": "mul",
            "zeroed_fraction": round(n["zeroed"], 4),
            "grad_in": n["grad_in"],
            "grad_out": n.get("grad_out"),
        },
        where=Where(op="mul", source=src),
        cause="a multiply by a tensor of 0s and 1s (a mask, or all 0s such as a zero initial "
        "state) zeroes exactly the entries where it is 0, by design; the others get their "
        "full gradient",
        fix="nothing to fix if the zeros are meant: padding, or a structural mask such as a "
        "causal or an autoregressive (MADE) weight mask",
        severity=Severity.INFO,
        confidence=0.5,
    )


def _loss_is_zero(tl: TimelineView, step: int) -> bool:
    """Whether every training loss recorded on `step` (logged, else backward's root) is
    exactly 0."""
    values = dict(tl.series("loss.train")).get(step) or dict(tl.series("loss.backward")).get(step)
    return bool(values) and all(v == 0.0 for v in values)


def _params_got_gradient(tl: TimelineView, step: int) -> bool:
    """Some parameter had a non-zero gradient at that step's optimizer step (measured)."""
    norms = tl.at("grads.norm", step)
    return isinstance(norms, dict) and any(
        isinstance(v, int | float) and v > 0 for v in norms.values()
    )


def _blocks(n: dict[str, Any]) -> bool:
    zeroed = n.get("zeroed")
    return (
        zeroed is not None
        and bool(n.get("grad_in"))
        and not n.get("mask")
        and not n.get("trained_operand")
        and zeroed >= FRACTION.get(n.get("op"), DEFAULT_FRACTION)
    )


def _remeasured(walks: list[dict], e: dict[str, Any], n: dict[str, Any]) -> int | bool | None:
    """The same op (and line) on the later walks: the first step where it blocks again, False
    when a later walk measured it passing instead (a transient zero), None when no later walk
    says (there is none, or a named op is absent from it)."""
    op, src = n.get("op"), n.get("source")
    cleared = False
    for w in walks:
        if w["step"] <= e["step"]:
            continue
        same = [m for m in w.get("nodes") or [] if m.get("op") == op and m.get("source") == src]
        if any(_blocks(m) for m in same):
            return w["step"]
        # A named op is recorded on every walk that runs its line; an unnamed one only when it
        # blocks (or masks), so on a later walk of the same unnamed code its absence says it
        # passed.
        if same or not src:
            cleared = True
    return False if cleared else None


def _passed_before(tl: TimelineView, e: dict[str, Any], n: dict[str, Any]) -> int | None:
    """The step of the run's first walk when it came before any update (step 1) and the op
    did not block on it: for a walk without lines (zero-code mode's step 1), no op of that
    name blocked; with lines, the same op and line passed (or did not block)."""
    walks = sorted(tl.events("gradient_path"), key=lambda w: w.get("step", 0))
    if not walks or walks[0].get("step") != 1 or e.get("step", 0) <= 1:
        return None
    first = walks[0]
    op, src = n.get("op"), n.get("source")
    nodes = first.get("nodes") or []
    if first.get("lines_known"):
        same = [m for m in nodes if m.get("op") == op and m.get("source") == src]
        if not same:
            return None  # its line did not run on step 1: nothing to compare
    else:
        same = [m for m in nodes if m.get("op") == op]
    return None if any(_blocks(m) for m in same) else 1


def _walks(tl: TimelineView) -> list[dict]:
    """The sampled walks; those that know their source lines, when there are any (a walk of
    step 1 in zero-code mode has none: its forward ran before traindoctor attached)."""
    walks = tl.events("gradient_path")
    return [e for e in walks if e.get("lines_known")] or walks

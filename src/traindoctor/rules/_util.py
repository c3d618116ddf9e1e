"""Helpers shared by rules: grouping parameter names by module, loss series, number formats."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any

from ..timeline import TimelineView


def module_of(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else "<model>"


def group_params(names: list[str], all_names: list[str]) -> list[tuple[str, list[str]]]:
    """Collapse names into the largest modules they cover entirely.

    Returns [(label, names)], e.g. [("decoder", [... 12 names]), ("head.bias", ["head.bias"])].
    Linear in the number of names: each module prefix counts its params and the chosen ones.
    """
    chosen = set(names)
    total: dict[str, int] = {}
    hits: dict[str, int] = {}
    for n in set(all_names) | chosen:
        parts = n.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            total[prefix] = total.get(prefix, 0) + 1
            hits[prefix] = hits.get(prefix, 0) + (n in chosen)
    members: dict[str, list[str]] = {}
    for n in sorted(chosen):
        parts = n.split(".")
        label = n
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if hits[prefix] == total[prefix]:
                label = prefix  # the outermost module whose params are all chosen
                break
        members.setdefault(label, []).append(n)
    return list(members.items())


def describe_groups(groups: list[tuple[str, list[str]]], limit: int = 4) -> str:
    bits = []
    for label, members in groups[:limit]:
        if len(members) == 1 and members[0] == label:
            bits.append(f"`{label}`")
        else:
            bits.append(f"all {len(members)} params of `{label}.*`")
    if len(groups) > limit:
        bits.append(f"{len(groups) - limit} more group(s)")
    return ", ".join(bits)


def common_module(names: list[str]) -> str | None:
    if not names:
        return None
    split = [module_of(n).split(".") for n in names]
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common) or None


def train_loss_values(tl: TimelineView) -> list[tuple[int, float]]:
    """Training loss values in order: logged ones if the user logged, else backward roots."""
    logged = tl.series("loss.train")
    source = logged if logged else tl.series("loss.backward")
    return [(step, float(v)) for step, values in source for v in values]


def per_step_mean(values: list[tuple[int, float]]) -> list[tuple[int, float]]:
    by_step: dict[int, list[float]] = {}
    for step, v in values:
        by_step.setdefault(step, []).append(v)
    return [(s, statistics.fmean(vs)) for s, vs in sorted(by_step.items())]


def fmt_factor(f: float) -> str:
    if not math.isfinite(f):
        return str(f)
    frac = Fraction(f).limit_denominator(4096)
    if abs(float(frac) - f) <= 1e-9 * max(1.0, abs(f)) and frac.denominator != 1:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{f:g}"


def trainable_names(tl: TimelineView) -> list[str]:
    return [n for n, info in (tl.fact("params") or {}).items() if info.get("requires_grad")]


def optimizer_names(tl: TimelineView) -> set[str]:
    return {
        n
        for opt in tl.fact("optimizers") or []
        for g in opt["groups"]
        for n in g["params"]
        if n is not None
    }


def stepped_by_hand(tl: TimelineView) -> set[str]:
    """The params whose gradients a hand-written update applied (`p -= lr * p.grad` under
    no_grad, `p.data.add_(...)`: grads.stepped at the steps one closed, handsteps.py). The
    caller declares "optim.hand_step" and "grads.stepped"."""
    hand = {step for step, v in tl.series("optim.hand_step") if v}
    if not hand:
        return set()
    out: set[str] = set()
    for step, names in tl.series("grads.stepped"):
        if step in hand:
            out.update(names or ())
    return out


def merged_forward_calls(tl: TimelineView) -> dict[str, dict[str, Any]] | None:
    """Module call facts merged over the structural steps, or None if never recorded."""
    series = tl.series("forward.calls")
    if not series:
        return None
    merged: dict[str, dict[str, Any]] = {}
    for _, calls in series:
        for mod, info in calls.items():
            m = merged.setdefault(mod, dict(info))
            m["grad_enabled"] = m.get("grad_enabled") or info.get("grad_enabled")
            m["output_requires_grad"] = m.get("output_requires_grad") or info.get(
                "output_requires_grad"
            )
    return merged


def ended(tl: TimelineView) -> bool:
    return bool(tl.fact("outcome"))


def optimizer_source(opt: dict[str, Any]) -> str | None:
    """The user line for an optimizer fact: where it was built (zero-code mode sees the
    constructor), else the `td.watch(...)` call that handed it over."""
    return opt.get("created_at") or opt.get("watched_at")


def same_layout(a: Iterable[Iterable[int]], b: Iterable[Iterable[int]]) -> bool:
    """Two lists of tensor shapes with the same count and the same ranks (sizes may differ)."""
    ranks_a = sorted(len(list(s)) for s in a)
    ranks_b = sorted(len(list(s)) for s in b)
    return bool(ranks_a) and ranks_a == ranks_b


def graphless_loss_events(tl: TimelineView) -> list[dict[str, Any]]:
    """`loss_not_differentiable` events that mean the trained loss has no graph.

    The tensor backward() ran on decides. A tensor without graph passed to doc.log() counts
    only when no backward pass was observed at all: once backward() ran on losses with a
    graph, the logged one is a detached copy for logging (`doc.log(loss=loss.detach())`).
    """
    # A graph that reaches only tensors an optimizer holds trains those tensors (SAC's
    # log_alpha temperature, a learnable loss weight kept outside any module): not graphless.
    held = {tuple(u["shape"]) for u in foreign_tensors(tl) if u.get("requires_grad")}
    events = [
        e
        for e in tl.events("loss_not_differentiable")
        if not e.get("leaves") or not all(tuple(s) in held for s in e["leaves"])
    ]
    from_backward = [e for e in events if e.get("via") == "backward"]
    if from_backward:
        return from_backward
    if any(c for _, c in tl.series("backward.count")):
        return []
    return events


def onset(events: list[dict[str, Any]], holds: Callable[[dict[str, Any]], bool]) -> int | None:
    """Step of the first event of the final run of events for which `holds` is true: when a
    structural fact that is still true at the end became true. None if it is false at the end."""
    start = None
    for e in events:
        # a false event resets the run; the first true event after it starts a new one
        start = (e["step"] if start is None else start) if holds(e) else None
    return start


def step_source(tl: TimelineView) -> str | None:
    """The user's line that calls optimizer.step(); in a loop that updates the weights by hand,
    the line that writes them through `p.data`, when seen."""
    e = tl.events("optimizer_step")
    if e:
        return e[0].get("source")
    return next((h["source"] for h in tl.events("hand_step") if h.get("source")), None)


def loss_source(tl: TimelineView, validating: bool = False) -> str | None:
    """The user's line that logs the (train or validation) loss, else the backward() line."""
    src = next(
        (e.get("source") for e in tl.events("log_call") if bool(e.get("validating")) == validating),
        None,
    )
    if src is None and not validating and tl.events("backward_call"):
        src = tl.events("backward_call")[0].get("source")
    return src


def foreign_tensors(tl: TimelineView) -> list[dict[str, Any]]:
    """Tensors an optimizer holds that are not params of the watched models (facts)."""
    return [
        u
        for opt in tl.fact("optimizers") or []
        for g in opt["groups"]
        for u in g.get("unnamed", [])
    ]


def replaced_params(tl: TimelineView) -> set[str]:
    """Param names whose tensor was replaced at some point of the run."""
    out: set[str] = set()
    for _, names in tl.series("params.replaced"):
        out |= set(names)
    return out


def loss_went(losses: list[float]) -> str:
    """ "; the loss measured here went A -> B" (first and last value), or "" under two values."""
    if len(losses) < 2:
        return ""
    return f"; the loss measured here went {losses[0]:.4g} -> {losses[-1]:.4g}"

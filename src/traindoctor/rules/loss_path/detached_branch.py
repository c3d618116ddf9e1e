"""TD302 detached-branch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

REL_TOL = 1e-3
# Cut kinds of the `gradient_cut` events (probes/cuts.py) that are detaches: TD302's. The
# others (argmax, integer casts, comparisons, ops without a derivative) are TD301's.
DETACH_KINDS = ("detach", "data", "no_grad")
OP_KINDS = ("argmax", "index", "int_cast", "compare", "op")


@rule(
    code="TD302",
    name="detached-branch",
    severity=Severity.ERROR,
    summary="Part of the loss is computed from detached tensors: that part trains nothing.",
    requires=("gradpath.parts_detached", "loss.parts", "loss.train"),
    events=("gradient_cut", "gradient_path"),
    priority=11,
)
def detached_branch(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A loss part added to the loss without its autograd graph: computed from `.detach()`,
    `.data`, `.item()`, a numpy round-trip or under `torch.no_grad()`. Names the part (the
    `doc.log(parts=...)` name when there is one), the line that adds it and the line where
    the gradient was cut (the `.detach()`, the `.data`, the op run under `no_grad`).

    ## Why it matters
    The part shows up in the loss value, so the logs look right, but its gradient is zero:
    whatever it was meant to train (a box head, a polygon loss) never learns, and the part
    stays flat for the whole run.

    ## How it is measured
    On the sampled steps (step 1, rarely after, after TD107/TD108) the loss code, from the
    end of the model's forward to the backward, runs under a `TorchFunctionMode` that sees
    each torch call once and changes none: a call whose input requires grad and whose output
    does not (`.detach()`, `.data`, any op under `no_grad`) is a cut, and the tensors computed
    from it carry its line. A cut tensor added (add/sub) to a tensor with a live graph into
    a scalar that the loss sums, averages or scales in (checked at the backward, on the
    loss's graph: not an ODE solver's `t1 = t0 + dt` after the model's forward, a time the
    loss never sums) is reported with both lines (and the part it was logged as); the numpy
    round-trip `torch.from_numpy(t.detach().numpy())` is followed (the tensor that comes back
    shares the memory of the one that left). The same steps' backward is hooked node by node: a scalar
    `add`/`sub` whose other operand has no graph is a part added without graph (its line
    from anomaly-mode metadata). With `doc.log(parts=...)`, parts that carry no graph while
    others do (and whose values sum to the loss) are named, which also catches `.item()`
    parts that leave no trace in the graph; a `.item()` is only ever a hint for the line.

    A cut tensor stacked beside live ones and summed (`torch.sum(torch.stack(losses))`) or
    added per sample before the mean (`(ce + (aux.detach() - r) ** 2).mean()`) is a term too,
    when the backward confirms the loss sums it in linearly (a detached DQN target inside a
    square is not). A straight-through estimator adds the cut value back to what it was
    detached from (`soft + (hard - soft).detach()`, `loss - loss.detach()`): not a term.

    A term that keeps a graph but reaches no trained parameter (`_reach.py`: the loss split
    into its terms through linear nodes, each term's graph searched for the parameters an
    optimizer holds) while another term reaches them: its model side was cut on the way and
    its graph runs only to inputs made with `requires_grad` (forces `-dE/dr` whose network
    derivatives were `.detach()`ed, functorch's Lennard-Jones example). A warning: the term's
    share of the loss value is not measured.

    ## Example
    ```python
    poly = giou_loss(pred.detach(), target)   # detached: trains nothing
    loss = box_loss + poly
    ```

    ## Fix
    ```python
    poly = giou_loss(pred, target)
    loss = box_loss + poly
    ```

    A running sum's start of zeros (`lbox = torch.zeros(1); lbox += part`, as YOLOv5's loss
    does) has the same graph node as a detached part; the cut tracker knows it (a zeros
    factory in the loss code, or a small CPU tensor read as 0) and it is not reported: a start
    of 0 adds nothing.

    ## Known false positives
    Adding a constant offset tensor that is not 0 looks like a detached part in the graph,
    and so does, on a GPU, a start of zeros made before the forward. A deliberate
    zero-valued trick such as
    `loss - loss.detach()` is reported too. A detached *target* (a teacher, an EMA network)
    is not: it meets the prediction inside the loss term, whose result keeps its graph.
    """
    parts_steps = tl.series("gradpath.parts_detached")
    named: list[str] = []
    for _, info in parts_steps:
        det = (info or {}).get("detached") or []
        if det and (info or {}).get("with_graph"):
            named = [n for n in det if n not in named][:4]
            break
    cuts = tl.events("gradient_cut")
    term = next(
        (c for c in cuts if c.get("found") == "term" and c.get("cut") in DETACH_KINDS), None
    )
    if term is not None:
        yield _cut_finding(tl, term, cuts, named)
        return
    # Lines where TD301 reports the cut (an argmax, an integer cast): not a detach.
    op_sites = {c.get("added_at") for c in cuts if c.get("cut") in OP_KINDS}
    # Lines that add a Python number (a Dice loss's epsilon): the same graph node as a
    # detached term, but a constant on purpose.
    op_sites |= {c.get("added_at") for c in cuts if c.get("found") == "constant"}
    for e in _walks(tl):
        for n in e.get("nodes") or ():
            if not n.get("detached_input") or not n.get("grad_in"):
                continue
            src = n.get("source")
            if src and src in op_sites:
                continue
            if not src and not named:
                # No line: the loss code ran unseen (`model.forward(x)` called directly skips
                # the forward hook that opens the window), so a Python number
                # (`total = 0; total += loss`) cannot be told from a detached tensor.
                yield _unseen_add(tl, e["step"], n.get("op"))
                return
            at = f" at {src}" if src else ""
            part = f"part {', '.join(repr(p) for p in named)}" if named else "a loss term"
            hint = _item_hint(cuts, src, named)
            yield tl.finding(
                title=f"{part[0].upper()}{part[1:]} is added to the loss without its graph{at}",
                step=e["step"],
                evidence={"op": n.get("op"), "parts_without_graph": named, **hint[1]},
                where=Where(op=n.get("op"), source=src),
                cause=f"the `{n.get('op')}`{at} adds a tensor that does not require grad "
                f"({part}): it was computed from .detach()/.data/.item()/numpy or under "
                f"no_grad, so its gradient is 0 and it trains nothing{hint[0]}",
                fix="compute that part from the tensors that carry the graph (drop the "
                ".detach()/.item()/.data/numpy round-trip, or the no_grad around it)",
                confidence=0.8 if named else 0.6,
            )
            return
    if named and _parts_sum_to_loss(tl):
        origins = _part_origins(cuts, named)
        hint = _item_hint(cuts, None, named)
        said = "; ".join(f"{p!r} comes from {_origin(c)}" for p, c in origins.items())
        yield tl.finding(
            title=f"Loss part {', '.join(repr(p) for p in named)} carries no graph",
            step=parts_steps[0][0] if parts_steps else None,
            evidence={"parts_without_graph": named, **_cut_evidence(origins), **hint[1]},
            cause=f"doc.log(parts=...) got {', '.join(repr(p) for p in named)} without a "
            "graph while the other parts have one, and the parts sum to the loss: that part "
            "is in the loss value but passes no gradient"
            + (f" ({said})" if said else "")
            + hint[0],
            fix="compute that part from the tensors that carry the graph (no .item()/.detach())",
            confidence=0.7 if origins else 0.6,
        )
        return
    unreached = _unreached(tl)
    if unreached is not None:
        yield unreached


def _unreached(tl: TimelineView) -> Finding | None:
    """A loss term whose graph reaches inputs that require grad but no trained parameter,
    while another term reaches them (the walk's `unreached_terms`): a warning, since the term's
    share of the loss value is not measured."""
    event = next((e for e in _walks(tl) if e.get("unreached_terms")), None)
    if event is None:
        return None
    terms = event["unreached_terms"]
    first = terms[0]
    src = first.get("source")
    at = f" at {src}" if src else ""
    return tl.finding(
        title=f"The loss term `{first.get('op')}`{at} reaches no trained parameter: it trains "
        "nothing",
        step=event["step"],
        evidence={"terms": terms[:4], "parts_without_graph": []},
        where=Where(op=first.get("op"), source=src),
        cause=f"measured on the graph of step {event['step']}: the loss is a sum of terms; "
        f"the `{first.get('op')}` term{at} has a graph, but it reaches only tensors that "
        "require grad without being trained (inputs made with requires_grad, differentiated "
        "by the script), while the other terms reach the model's parameters. Its model side "
        "was cut on the way (a `.detach()`, a `.data`, a value computed under no_grad, "
        "derivatives taken without create_graph): it is in the loss value but passes no "
        "gradient to the model",
        fix="compute that term from the model's outputs with their graph: drop the "
        "`.detach()`/`.data` on the model's side of it (keep it only on targets), or take "
        "the derivatives with `create_graph=True`",
        confidence=0.6,
        severity=Severity.WARNING,
    )


def _unseen_add(tl: TimelineView, step: int, op: str | None) -> Finding:
    """An add with an operand without graph, whose line and operand were not seen: info."""
    return tl.finding(
        title="An add in the loss has an operand without graph (a Python number or a "
        "detached tensor: the loss code was not seen)",
        step=step,
        evidence={"op": op, "parts_without_graph": [], "lines_known": False},
        where=Where(op=op),
        cause=f"measured on step {step}: a scalar `{op}` on the way to the loss has an input "
        "that carries no graph; the lines of the loss code were not recorded (the model's "
        "forward ran without its hooks, e.g. `model.forward(x)` called directly), so it "
        "cannot be told whether that input is a Python number (`total = 0; total += loss`, "
        "harmless) or a detached tensor (which would train nothing)",
        fix="nothing to fix if it is a number; if a loss part comes from .detach()/.item()/"
        ".data, compute it from the tensors that carry the graph. Calling `model(x)` instead "
        "of `model.forward(x)` lets traindoctor see the line",
        confidence=0.3,
        severity=Severity.INFO,
    )


def _origin(c: dict[str, Any]) -> str:
    """Where the gradient was cut, in words: "`.detach()` at train.py:12"."""
    at = c.get("cut_at") or "?"
    kind = c.get("cut")
    if kind == "data":
        text = f"`.data` at {at}"
    elif kind == "no_grad":
        text = f"`{c.get('cut_op')}` run under `torch.no_grad()` at {at}"
    elif kind == "item":
        text = f"`.item()` at {at}"
    else:
        text = f"`.{c.get('cut_op') or 'detach'}()` at {at}"
    return text + (" and a numpy round-trip" if c.get("numpy") else "")


def _cut_finding(
    tl: TimelineView, term: dict[str, Any], cuts: list[dict[str, Any]], named: list[str]
) -> Finding:
    added = term.get("added_at")
    linked = [c["part"] for c in cuts if c.get("found") == "part" and c.get("added_at") == added]
    parts = [p for p in dict.fromkeys(linked) if p] or (named if len(named) == 1 else [])
    origin = _origin(term)
    if parts:
        subject = (
            f"Part {', '.join(repr(p) for p in parts)} (logged via doc.log parts), added to "
            f"the loss at {added},"
        )
    else:
        subject = f"The term added to the loss at {added}"
    others = [
        {k: c.get(k) for k in ("cut", "cut_at", "added_at")}
        for c in cuts
        if c.get("found") == "term" and c.get("cut") in DETACH_KINDS and c is not term
    ][:4]
    no_grad = term.get("cut") == "no_grad"
    return tl.finding(
        title=f"{subject} comes from {origin}: it trains nothing",
        step=term["step"],
        evidence={
            "cut": term.get("cut"),
            "cut_op": term.get("cut_op"),
            "cut_at": term.get("cut_at"),
            "cut_code": term.get("cut_code"),
            "added_at": added,
            "numpy_round_trip": bool(term.get("numpy")),
            "parts": parts,
            "parts_without_graph": named,
            "other_cuts": others,
        },
        where=Where(op="add", source=added),
        cause=f"measured on step {term['step']}: the tensor added at {added} was computed "
        f"from {origin} (`{term.get('cut_code') or '?'}`), which carries no graph; it is in "
        "the loss value but its gradient is 0, so it trains nothing",
        fix=(
            "compute it with gradients enabled: move it out of the `torch.no_grad()` block"
            if no_grad
            else "compute it from the tensors that carry the graph: drop the "
            f"`.{term.get('cut_op')}`"
            + (" and the numpy round-trip (stay in torch)" if term.get("numpy") else "")
            + "; detach only what is meant as a target (a teacher's output)"
        ),
        confidence=0.9,
    )


def _part_origins(cuts: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in cuts:
        p = c.get("part")
        # An `.item()` is only a hint (_item_hint), never an origin by itself.
        if (
            c.get("found") == "part"
            and p in names
            and p not in out
            and c.get("cut") in DETACH_KINDS
        ):
            out[p] = c
    return out


def _cut_evidence(origins: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not origins:
        return {}
    return {
        "cuts": {p: {"cut": c.get("cut"), "cut_at": c.get("cut_at")} for p, c in origins.items()}
    }


def _item_hint(
    cuts: list[dict[str, Any]], source: str | None, names: list[str]
) -> tuple[str, dict[str, Any]]:
    """A `.item()` whose value was added at `source` or logged as one of `names`: only a hint
    (logging `loss.item()` is healthy), never a finding by itself."""
    for c in cuts:
        if c.get("cut") != "item":
            continue
        if (source and c.get("added_at") == source) or (c.get("part") in names):
            return (
                f"; the value equals a `.item()` taken at {c.get('cut_at')}, a Python number "
                "without graph",
                {"item_at": c.get("cut_at")},
            )
    return "", {}


def _parts_sum_to_loss(tl: TimelineView) -> bool:
    losses = dict(tl.series("loss.train"))
    for step, parts in tl.series("loss.parts"):
        loss = losses.get(step)
        if isinstance(loss, list):
            loss = loss[-1] if loss else None
        if loss is None or not isinstance(parts, dict) or not parts:
            continue
        total = sum(v for v in parts.values() if isinstance(v, int | float))
        if abs(total - loss) <= REL_TOL * max(abs(loss), 1e-8):
            return True
    return False


def _walks(tl: TimelineView) -> list[dict]:
    """The sampled walks; those that know their source lines, when there are any (a walk of
    step 1 in zero-code mode has none: its forward ran before traindoctor attached)."""
    walks = tl.events("gradient_path")
    return [e for e in walks if e.get("lines_known")] or walks

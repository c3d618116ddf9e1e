"""TD207 vanishing-gradient."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import Reader, SortedWindow, fresh
from .._registry import rule
from .._util import ended, module_of
from ._layers import fmt, layer_norms, layer_order, params_of

SPARSE_BY_DESIGN = ("Embedding", "EmbeddingBag")
LORA_A = re.compile(r"(^|\.)lora_(embedding_)?A(\.|$)")
ROOT = module_of("transitions")  # the layer name of params held by the model itself


class RatioScan:
    """TD207's state between passes (rules/_incremental.py): per layer the ||grad|| / ||θ||
    ratios of the sampled steps, sorted for their median, and how many steps gave one; a step
    is folded in for good once settled in both signals, the others for one pass and taken out
    again. A change of the module types starts over."""

    def __init__(self, types_key: str | None = None) -> None:
        self.types_key = types_key
        self.grads, self.weights = Reader("grads.norm"), Reader("params.norm")
        self.readers = (self.grads, self.weights)
        self.open: dict[int, list] = {}  # step -> [grad norms, weight norms] not folded
        self.rel: dict[str, SortedWindow] = {}
        self.steps = 0

    def judge(self, tl: TimelineView, types: dict, decide: object, needed: int = 1) -> object:
        """decide(rel, steps) with every step read so far folded in; False, folding nothing,
        while fewer than `needed` steps have both norms (decide could not find enough)."""
        key = repr(sorted(types.items()))
        if key != self.types_key or not fresh(self, tl):
            self.__init__(key)
        for i, reader in enumerate(self.readers):
            settled, pending = reader.read(tl)
            for s, rec in settled + pending:
                self.open.setdefault(s, [None, None])[i] = rec
        if (
            self.steps + sum(g is not None and p is not None for g, p in self.open.values())
            < needed
        ):
            # The structural steps' passes: the steps wait, unfolded, for a pass that can
            # judge them (on a model of 10,000 tensors, 5,000 layers folded and undone for
            # nothing at each of them).
            return False
        g_done, p_done = self.grads.done, self.weights.done
        for s in sorted(self.open):
            if g_done is None or p_done is None or s > g_done or s > p_done:
                break
            self._fold(s, *self.open.pop(s), types)
        undo: list[tuple[str, float]] = []
        steps = self.steps
        for s in sorted(self.open):
            steps += self._fold(s, *self.open[s], types, undo)
        rel = {layer: (len(w), w.median) for layer, w in self.rel.items() if len(w)}
        try:
            return decide(rel, steps)  # type: ignore[operator]
        finally:
            for layer, ratio in reversed(undo):
                self.rel[layer].remove(ratio)

    def _fold(self, step: int, g: object, p: object, types: dict, undo: list | None = None) -> int:
        if g is None or p is None:
            return 0
        seen = 0
        for layer, ratio in _ratios(g, p, types):
            self.rel.setdefault(layer, SortedWindow()).add(ratio)
            seen = 1
            if undo is not None:
                undo.append((layer, ratio))
        if undo is None:
            self.steps += seen
        return seen


def _pairs(grads: list, weights: list) -> Iterator[tuple[int, object, object]]:
    """(step, grad norms, weight norms) at the steps that have both."""
    by_step = dict(weights)
    for step, g in grads:
        if step in by_step:
            yield step, g, by_step[step]


#: layer-name tuples -> the containers among them (bounded: the few name sets of a run).
_CONTAINERS: dict[tuple[str, ...], frozenset[str]] = {}


def _containers(layers: tuple[str, ...]) -> frozenset[str]:
    """The layers that are also the parent of another layer: their own params (a CRF's
    `transitions` or a CLIP `logit_scale` on the model itself, a block's own `gamma` beside its
    convs) are listed before their children's by named_parameters, whatever their place in the
    forward, so they have no position in the chain of layers a vanishing gradient runs along."""
    found = _CONTAINERS.get(layers)
    if found is None:
        parents: set[str] = set()
        for layer in layers:
            if layer == ROOT:
                continue
            parts = layer.split(".")
            parents.add(ROOT)  # the model's own params: module_of names them ROOT
            parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
        found = frozenset(layer for layer in layers if layer in parents)
        if len(_CONTAINERS) >= 16:
            _CONTAINERS.pop(next(iter(_CONTAINERS)))
        _CONTAINERS[layers] = found
    return found


def _ratios(g: object, p: object, types: dict) -> Iterator[tuple[str, float]]:
    """(layer, ||grad|| / ||θ||) of one sampled step, for the layers judged."""
    pn = layer_norms(p)  # type: ignore[arg-type]
    containers = _containers(tuple(pn))
    for layer, gv in layer_norms(g).items():  # type: ignore[arg-type]
        if layer in containers:
            continue  # params of a module that has child layers: no place in the chain
        if types.get(layer) in SPARSE_BY_DESIGN:
            continue  # a batch touches a few rows of an embedding table: small by design
        if LORA_A.search(layer):
            continue  # LoRA's B starts at 0, so A's gradient is 0 then tiny: by design
        if "Norm" in (types.get(layer) or ""):
            continue  # norm gains start at 1 (large ||θ||): a small ratio is not vanishing
        pv = pn.get(layer)
        if pv is None or pv <= 0 or gv <= 0:
            continue
        yield layer, gv / pv


def _in_attention(layer: str, types: dict) -> bool:
    """A projection inside an attention module (or the module itself: nn.MultiheadAttention's
    in_proj). A key projection's relative gradient is orders below its block's at init by
    design: while attention is nearly uniform it hardly moves the output, and softmax ignores
    the key bias (the same shift for every key), so that bias gets no gradient at all."""
    parent = layer.rsplit(".", 1)[0] if "." in layer else ""
    return "Attention" in (types.get(layer) or "") or "Attention" in (types.get(parent) or "")


def _per_model(
    rel: dict[str, tuple[int, object]], models: list[str]
) -> list[dict[str, tuple[int, object]]]:
    """`rel` split by watched model when there are several (a GAN's generator and
    discriminator, a teacher and a student): a gradient vanishes along one chain of layers, and
    two models trained by different losses are not one chain (a generator's first layer is far
    below a discriminator's by design early in a GAN)."""
    if len(models) < 2:
        return [rel]
    groups: dict[str, dict[str, tuple[int, object]]] = {}
    for layer, v in rel.items():
        owner = next((m for m in models if layer.startswith(m + ".")), "")
        groups.setdefault(owner, {})[layer] = v
    return list(groups.values())


def _low_any(
    rel: dict[str, tuple[int, object]],
    steps: int,
    needed: int,
    params: dict,
    orders: float,
    types: dict | None = None,
    models: list[str] | None = None,
) -> tuple[list[str], dict[str, float], float] | None:
    """`_low` judged within each watched model; the first model with low layers."""
    for group in _per_model(rel, models or []):
        found = _low(group, steps, needed, params, orders, types)
        if found is not None:
            return found
    return None


def _low(
    rel: dict[str, tuple[int, object]],
    steps: int,
    needed: int,
    params: dict,
    orders: float,
    types: dict | None = None,
) -> tuple[list[str], dict[str, float], float] | None:
    """(the early layers far below the median layer, the medians, the median layer's) or None.
    `rel`: layer -> (ratios held, their median as a call)."""
    if len(rel) < 3 or steps < needed:
        return None
    med = {layer: m() for layer, (n, m) in rel.items() if n >= needed}  # type: ignore[operator]
    if len(med) < 3:
        return None
    reference = statistics.median(med.values())
    limit = reference * 10.0 ** (-orders)
    ordered = layer_order(params, list(med))
    early = ordered[: max(1, len(ordered) // 2)]
    late = ordered[len(early) :]
    # A vanishing gradient shrinks on its way back to the input: the early half of the layers
    # as a whole gets far less than the late half. One odd layer anywhere (an attention query
    # at init, a gate) is not that.
    if late and statistics.median(med[x] for x in early) > statistics.median(
        med[x] for x in late
    ) * 10.0 ** (1 - orders):
        return None
    types = types or {}
    low = [layer for layer in early if med[layer] < limit and not _in_attention(layer, types)]
    return (low, med, reference) if low else None


@rule(
    code="TD207",
    name="vanishing-gradient",
    severity=Severity.WARNING,
    summary="Layers whose gradients are orders of magnitude below the other layers'.",
    requires=("grads.norm", "params.norm", "activations.sites"),
    facts=("module_types", "outcome", "params", "models"),
    priority=45,
    state=lambda: RatioScan(),
)
def vanishing_gradient(
    tl: TimelineView,
    state: RatioScan,
    *,
    min_steps: int = 4,
    orders: float = 2.0,
) -> Iterator[Finding]:
    """
    ## What it detects
    Layers whose relative gradient (gradient norm over parameter norm) stays, over the observed
    window, at least `orders` orders of magnitude below the median layer's: those layers
    effectively do not train. Typically the first layers of a deep network with saturating
    activations (sigmoid, tanh) and no normalization or residual connections.

    ## Why it matters
    The loss still goes down (the last layers learn), so the run looks healthy, but the early
    layers stay near their random initialization: the model behaves like a much shallower one,
    and a higher learning rate only makes the last layers unstable.

    ## How it is measured
    On sampled steps, each param's gradient norm just before `optimizer.step()` and its norm
    before the step (fused `torch._foreach_norm`, batched read-back). Per layer, the ratio
    ||grad|| / ||θ|| makes layers of different sizes comparable; its median over the window is
    compared with the median over all layers (of the same model, when several are watched: a
    GAN's generator and discriminator are trained by different losses). Only layers of the early half (in forward order)
    are reported, and only when the early half as a whole is at least `orders - 1` orders of
    magnitude below the late half: a vanishing gradient shrinks on its way back to the input,
    while one odd layer anywhere (an attention query at init, a gate) does not. Normalization
    gains are not judged (they start at 1, so their relative gradient is small by design), nor
    are the projections inside an attention module: while attention is nearly uniform (at
    init) a key projection hardly moves the output and softmax ignores its bias, so its
    relative gradient is orders below its block's by design (a healthy tiny BART: 859x).
    Exactly-zero gradients are left to TD102/TD104.

    ## Example
    ```python
    layers = []
    for _ in range(10):
        layers += [nn.Linear(64, 64), nn.Sigmoid()]  # sigmoid' <= 0.25 per layer
    model = nn.Sequential(*layers, nn.Linear(64, 4))
    ```

    ## Fix
    ```python
    for _ in range(10):
        layers += [nn.Linear(64, 64), nn.ReLU()]  # with nn.init.kaiming_normal_ on the weights
    # or add normalization (nn.LayerNorm) / residual connections between the blocks
    ```

    ## Known false positives
    Embedding tables (`nn.Embedding`, `nn.EmbeddingBag`) are not judged: a batch updates only
    the rows it uses, so their relative gradient is small by design; nor are LoRA `lora_A`
    adapters, whose gradient is 0 at first because `lora_B` starts at 0. Layers frozen on purpose by a zero learning rate get small
    gradients by design; a pretrained backbone fine-tuned with a new head can have a relative
    gradient one or two orders below the head's during the first steps.
    """
    types = tl.fact("module_types") or {}
    needed = 1 if ended(tl) else min_steps
    params = tl.fact("params") or {}
    # The medians of the ratios kept between passes decide; a finding (rare) is then worded
    # from the whole series.
    models = list(tl.fact("models") or {})
    decide = lambda rel, n: (  # noqa: E731
        _low_any(rel, n, needed, params, orders, types, models) is not None
    )
    if not state.judge(tl, types, decide, needed):
        return
    rel: dict[str, list[float]] = {}
    steps_seen: set[int] = set()
    for step, g, p in _pairs(tl.series("grads.norm"), tl.series("params.norm")):
        for layer, ratio in _ratios(g, p, types):
            rel.setdefault(layer, []).append(ratio)
            steps_seen.add(step)
    found = _low_any(
        {layer: (len(v), lambda v=v: statistics.median(v)) for layer, v in rel.items()},
        len(steps_seen),
        needed,
        params,
        orders,
        types,
        models,
    )
    if found is None:
        return
    low, med, reference = found
    first = low[0]
    names = tuple(n for layer in low for n in params_of(params, layer))
    top = max(med.values())
    saturating = _saturating(tl, types)
    grown = _after_growth(tl, low, types, orders)
    if grown is not None:
        yield _grown_finding(tl, grown, low, med, reference, names, sorted(steps_seen))
        return
    yield tl.finding(
        title=f"vanishing gradient: {len(low)} of {len(med)} layers get gradients "
        f"{reference / med[first]:.3g}x smaller than the median layer (first: `{first}`)",
        step=min(steps_seen),
        evidence={
            "layers": {layer: med[layer] for layer in low},
            "median_layer_ratio": reference,
            "largest_layer_ratio": top,
            "all_layers": {layer: med[layer] for layer in layer_order(params, med)},
            "observed_steps": sorted(steps_seen),
            "measure": "median over sampled steps of ||grad|| / ||param|| per layer",
        },
        where=Where(module=first, params=names),
        cause=f"the relative gradient ||grad||/||θ|| of `{first}` is {fmt(med[first])} against "
        f"{fmt(reference)} for the median layer: "
        + _shrink_cause(layer_order(params, med), med, first, reference, saturating),
        fix=(
            "use non-saturating activations (ReLU/GELU) with a matching init (kaiming_normal_), "
            if saturating
            else "init the layers with a gain that matches the activation "
            "(kaiming_normal_(w, nonlinearity='relu') for ReLU/GELU), "
        )
        + "or add normalization (LayerNorm/BatchNorm) or residual connections; raising the "
        "learning rate does not help the early layers",
    )


# A layer whose weight norm grew this many times since the first sampled step no longer has
# the weights its relative gradient was measured against at init.
GROWTH = 10.0


def _after_growth(
    tl: TimelineView, low: list[str], types: dict, orders: float
) -> dict[str, object] | None:
    """When the low layers were not low at the first sampled step (the initial weights, before
    any update) and every one of their weight norms grew at least GROWTH times since: the
    small ratio follows ||θ||, not a gradient vanishing on its way back (a step far too large
    blew the weights up: Adam at lr=1 moves every weight by about 1 per step). The first
    step, the growth of each layer, and the first sampled step at which they were low."""
    pairs = list(_pairs(tl.series("grads.norm"), tl.series("params.norm")))
    if len(pairs) < 2:
        return None
    s0, g0, p0 = pairs[0]
    at_first = dict(_ratios(g0, p0, types))
    if len(at_first) < 3:
        return None
    ref0 = statistics.median(at_first.values())
    if any(at_first.get(x, 0.0) < ref0 * 10.0 ** (-orders) for x in low):
        return None  # already low at init: the chain of layers, as the main finding says
    n0, n1 = layer_norms(p0), layer_norms(pairs[-1][2])  # type: ignore[arg-type]
    growth = {x: n1[x] / n0[x] for x in low if n0.get(x) and n1.get(x)}
    if len(growth) < len(low) or min(growth.values()) < GROWTH:
        return None
    since = s0
    for step, g, p in pairs[1:]:
        now = dict(_ratios(g, p, types))
        ref = statistics.median(now.values()) if now else 0.0
        if now and all(now.get(x, ref) < ref * 10.0 ** (-orders) for x in low):
            since = step
            break
    return {
        "first_step": s0,
        "low_from_step": since,
        "ratio_at_first_step": {x: at_first[x] for x in low},
        "median_at_first_step": ref0,
        "weight_growth": growth,
    }


def _grown_finding(
    tl: TimelineView,
    grown: dict,
    low: list[str],
    med: dict[str, float],
    reference: float,
    names: tuple[str, ...],
    steps: list[int],
) -> Finding:
    """TD207's measure on layers whose weights grew GROWTH-fold since a normal first step: an
    info dated from the step they were first low (what follows a blow-up of the weights)."""
    first = low[0]
    growth = grown["weight_growth"]
    return tl.finding(
        title=f"{len(low)} of {len(med)} layers' relative gradients fell "
        f"{reference / med[first]:.3g}x below the median layer's after their weights grew "
        f"{min(growth.values()):.3g}x or more (first: `{first}`)",
        step=grown["low_from_step"],
        severity=Severity.INFO,
        evidence={
            "layers": {layer: med[layer] for layer in low},
            "median_layer_ratio": reference,
            "ratio_at_first_step": grown["ratio_at_first_step"],
            "median_at_first_step": grown["median_at_first_step"],
            "weight_growth": growth,
            "observed_steps": steps,
            "measure": "median over sampled steps of ||grad|| / ||param|| per layer",
        },
        where=Where(module=first, params=names),
        cause=(
            f"at step {grown['first_step']} (the initial weights) `{first}`'s relative "
            f"gradient was {fmt(grown['ratio_at_first_step'][first])} against "
            f"{fmt(grown['median_at_first_step'])} for the median layer, not low; since then "
            f"the weights of these layers grew {min(growth.values()):.3g}x or more "
            f"(||θ|| of `{first}` {growth[first]:.3g}x), and from step "
            f"{grown['low_from_step']} their ||grad||/||θ|| is orders below the others': the "
            "ratio fell with the weights' growth (steps far too large blow weights up this "
            "way), not along a chain of layers at init"
        ),
        fix="if a learning rate too high grew the weights (TD206/TD210), lower it first; "
        "then see whether these layers still fall behind",
    )


# Saturating activation modules -> the name their cause uses.
SATURATING = {
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Hardtanh": "hardtanh",
    "Softsign": "softsign",
    "LogSigmoid": "logsigmoid",
    "Hardsigmoid": "hardsigmoid",
}


def _saturating(tl: TimelineView, types: dict) -> list[str]:
    """The saturating activations the model uses: its modules, and the tanh/sigmoid calls
    (functional ones included) the activations probe saw in its forward."""
    kinds = {SATURATING[str(t)] for t in types.values() if str(t) in SATURATING}
    for _, sites in tl.series("activations.sites"):
        for info in (sites or {}).values():
            kind = (info or {}).get("kind")
            if kind in ("tanh", "sigmoid", "hardtanh"):
                kinds.add(kind)
    return sorted(kinds)


def _shrink_cause(
    order: list[str], med: dict[str, float], first: str, reference: float, saturating: list[str]
) -> str:
    """How the gradient shrinks, from the measured layers, and the cause the model's own
    activations point to (saturating ones, or none: the scale lost layer by layer)."""
    between = [layer for layer in order if med.get(layer, 0) > med[first]]
    k = max(1, sum(1 for layer in between if med[layer] <= reference))
    per_layer = (reference / med[first]) ** (1 / k) if med[first] > 0 else None
    shrink = (
        f"it shrinks about {per_layer:.2g}x per layer over the {k} layers up to the median one"
        if per_layer
        else "it shrinks on its way back through the layers after it"
    )
    if saturating:
        why = (
            f"the model's {'/'.join(saturating)} activations (derivative at most 0.25 for "
            "sigmoid, 1 for tanh, near 0 in their tails) multiply it layer after layer"
        )
    else:
        why = (
            "no tanh/sigmoid activation was seen in the model's forward, so the signal itself "
            "loses scale layer after layer (an init whose gain does not match the activation, "
            "with no normalization or residual path to restore it)"
        )
    return f"{shrink}: {why}, so these layers barely train"

"""TD207 vanishing-gradient."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import ended
from ._layers import fmt, layer_order, layer_series, params_of

SPARSE_BY_DESIGN = ("Embedding", "EmbeddingBag")
LORA_A = re.compile(r"(^|\.)lora_(embedding_)?A(\.|$)")


@rule(
    code="TD207",
    name="vanishing-gradient",
    severity=Severity.WARNING,
    summary="Layers whose gradients are orders of magnitude below the other layers'.",
    requires=("grads.norm", "params.norm"),
    facts=("module_types", "outcome", "params"),
    priority=45,
)
def vanishing_gradient(
    tl: TimelineView,
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
    compared with the median over all layers. Only layers of the early half (in forward order)
    are reported, and only when the early half as a whole is at least `orders - 1` orders of
    magnitude below the late half: a vanishing gradient shrinks on its way back to the input,
    while one odd layer anywhere (an attention query at init, a gate) does not. Normalization
    gains are not judged (they start at 1, so their relative gradient is small by design).
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
    grads = layer_series(tl.series("grads.norm"))
    pnorms = dict(layer_series(tl.series("params.norm")).items())
    types = tl.fact("module_types") or {}
    rel: dict[str, list[float]] = {}
    steps_seen: set[int] = set()
    for layer, series in grads.items():
        if types.get(layer) in SPARSE_BY_DESIGN:
            continue  # a batch touches a few rows of an embedding table: small by design
        if LORA_A.search(layer):
            continue  # LoRA's B starts at 0, so A's gradient is 0 then tiny: by design
        if "Norm" in (types.get(layer) or ""):
            continue  # norm gains start at 1 (large ||θ||): a small ratio is not vanishing
        pn = dict(pnorms.get(layer, []))
        for step, g in series:
            p = pn.get(step)
            if p is None or p <= 0 or g <= 0:
                continue
            rel.setdefault(layer, []).append(g / p)
            steps_seen.add(step)
    needed = 1 if ended(tl) else min_steps
    if len(rel) < 3 or len(steps_seen) < needed:
        return
    med = {layer: statistics.median(v) for layer, v in rel.items() if len(v) >= needed}
    if len(med) < 3:
        return
    reference = statistics.median(med.values())
    limit = reference * 10.0 ** (-orders)
    params = tl.fact("params") or {}
    ordered = layer_order(params, list(med))
    early = ordered[: max(1, len(ordered) // 2)]
    late = ordered[len(early) :]
    # A vanishing gradient shrinks on its way back to the input: the early half of the layers
    # as a whole gets far less than the late half. One odd layer anywhere (an attention query
    # at init, a gate) is not that.
    if late and statistics.median(med[x] for x in early) > statistics.median(
        med[x] for x in late
    ) * 10.0 ** (1 - orders):
        return
    low = [layer for layer in early if med[layer] < limit]
    if not low:
        return
    first = low[0]
    names = tuple(n for layer in low for n in params_of(params, layer))
    top = max(med.values())
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
        f"{fmt(reference)} for the median layer: the gradient shrinks on its way back through "
        "the layers after it (saturating activations such as sigmoid/tanh, whose derivative is "
        "at most 0.25/1, multiplied layer after layer), so these layers barely train",
        fix="use non-saturating activations (ReLU/GELU) with a matching init (kaiming_normal_), "
        "or add normalization (LayerNorm/BatchNorm) or residual connections; raising the "
        "learning rate does not help the early layers",
    )

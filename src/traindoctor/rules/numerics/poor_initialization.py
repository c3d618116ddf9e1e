"""TD209 poor-initialization."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ..setup._loss_inputs import loss_sites
from ..setup.labels_degenerate import multi_hot_rows
from ._layers import fmt, params_of

# Measurements of step 1 precede the first optimizer step (or hand-written update): only they
# describe the initialization. After an update with a learning rate far too high, the output
# scale and the loss describe the blow-up, not the init (TD210/TD20x report that).
FIRST_STEP = 1


@rule(
    code="TD209",
    name="poor-initialization",
    severity=Severity.WARNING,
    summary="The loss or the final layer's output scale at init is far from what it should be.",
    requires=(
        "init.ce_loss",
        "init.ce_classes",
        "init.ce_uniform",
        "init.ce_cosine",
        "init.in_std",
        "init.out_std",
        "loss_inputs.stats",
    ),
    events=("cross_entropy_call", "final_layers", "loss_input", "cosine_logits"),
    facts=("params", "tied_params", "module_types"),
    priority=35,
)
def poor_initialization(
    tl: TimelineView,
    *,
    ce_factor: float = 2.0,
    ce_margin: float = 1.0,
    max_gain: float = 4.0,
    min_out_std: float = 1.0,
) -> Iterator[Finding]:
    """
    ## What it detects
    - a cross-entropy over C classes whose first observed value is above both `ce_factor` x ln C
      and ln C + `ce_margin` (a model at init should be unsure: loss ≈ ln C);
    - a final layer (the parametric op closest to the loss) whose output std at the first
      steps is more than `max_gain` times its input's std and at least `min_out_std`.

    ## Why it matters
    A model that starts confidently wrong spends its first steps undoing its init with huge
    gradients (the "hockey stick" loss curve); a final layer that amplifies its input makes the
    logits or box regressions large, and with them the loss and the gradients of every layer
    behind it. In the seed report the final conv of the box head was the layer that exploded.

    ## How it is measured
    `torch.nn.functional.cross_entropy` (which `nn.CrossEntropyLoss` calls) is wrapped during
    the structural steps to record C and the loss value (reduction "mean" or "none"); forward
    hooks on the leaf modules with params record std(input) and std(output) on those steps, and
    the first backward's graph says which modules are final. Only measurements of the first
    step, before the first update, are judged: after an update they describe the update, not
    the init (in `traindoctor run`, where the model is found at its first backward, the init
    is judged only if the first step's forward was seen). Wrapper and hooks are removed after
    the structural steps and never change a result.

    ## Example
    ```python
    model.head = nn.Linear(64, 10)
    nn.init.normal_(model.head.weight, std=1.0)  # logits std ≈ 8: loss at init ≈ 15, ln 10 = 2.3
    ```

    ## Fix
    ```python
    nn.init.normal_(model.head.weight, std=0.01)  # or keep PyTorch's default init
    nn.init.zeros_(model.head.bias)               # a prior-probability bias for rare classes
    ```

    The logits of the same call are also scored against a target they cannot know (the mean
    over rows of logsumexp(z) - mean(z), what a uniformly random label gives): when that is
    not above the bar, the logits are small and the loss is high because of how the target
    enters them (ArcFace's and CosFace's margin subtracted from the target logit, s = 16 to
    64), which no init changes; it is not reported.

    Logits that are cosines times a constant (a cosine classifier `s * cos`, `s * relu(cos)`,
    CosFace's `s * (cos - m)`, ArcFace's `s * cos(theta + m)`; told on the graph of the
    logits at the loss call: every path down from them ends at a product of operands made by
    a division and measured normalized, F.normalize's) are bounded by `s` whatever the weights
    and do not change with the scale of the params: no init sets their loss, `s` and the
    embeddings' geometry do. Their cross-entropy is not judged, nor the gain of the layer
    whose weights are normalized into them (its output is `s` times cosines, its input's scale
    cancels).

    A learned scalar among the final params (a temperature such as CLIP's `logit_scale`) is
    a scale chosen on purpose and trained: the cross-entropy is not judged then, nor a final
    op whose only params are such scalars.

    ## Known false positives
    Fine-tuning a pretrained model on data it was not trained on can start above ln C with a
    sound init; a regression head whose targets are on a large scale needs a large output (then
    scale the targets instead). Layers followed by a normalization are not final and not judged.
    """
    params = tl.fact("params") or {}
    final_events = tl.events("final_layers")
    final = list(final_events[0].get("modules") or []) if final_events else []
    final_params = list(final_events[0].get("params") or []) if final_events else []
    temperatures = _learned_scalars(params, final_params)
    # A final op whose only params are learned scalars is a temperature (CLIP's logit_scale,
    # SigLIP's t): its gain is the scale chosen by design and trained, not a fan-in init.
    final = [m for m in final if not _only_scalars(m, final_params, temperatures)]
    # A layer whose weights are normalized into cosine logits (cosine_logits): its output is s
    # times cosines whatever its weights' scale, and its input's scale cancels.
    # A final weight held by another module too (an output layer tied to the embedding,
    # `lm_head.weight = embed.weight`) is named after its first holder, often the embedding:
    # the modules holding it under its other names are final layers too (their stds are the
    # output layer's).
    tied = tl.fact("tied_params") or {}
    ties = {p: tied[p] for p in final_params if p in tied}
    for tie in ties.values():
        for alias in tie.get("also") or []:
            mod = alias.rsplit(".", 1)[0] if "." in alias else "<model>"
            if mod not in final:
                final.append(mod)
    cosine = tl.events("cosine_logits")
    cosine_params = set(cosine[0].get("params") or []) if cosine else set()
    final = [m for m in final if not _only_scalars(m, final_params, cosine_params)]
    gain = _first_gains(tl, final)
    # A tied output layer's gain is the embedding's init over the program's own input-side
    # scale (T5 multiplies its last hidden state by d ** -0.5 before the tied lm_head of an
    # N(0, 1) embedding): not a fan-in choice. Only logits large enough to cost more than
    # the loss at init's own bar are reported for it (a random target pays about std^2 / 2
    # over ln C: std above sqrt(2 x that excess)).
    tied_mods = {
        n.rsplit(".", 1)[0] if "." in n else "<model>"
        for p, tie in ties.items()
        for n in [p, *(tie.get("also") or [])]
    }
    # The bar is the one the measured loss at init must pass (below): an excess over ln C of
    # max((ce_factor - 1) ln C, ce_margin), with C the cross-entropy's classes when one ran.
    first_ce = _first_ce(tl)
    excess_bar = ce_margin
    if first_ce is not None and first_ce[2] > 1:
        excess_bar = max((ce_factor - 1) * math.log(first_ce[2]), ce_margin)
    bad_layers = [
        (m, v[0], v[2])
        for m, v in gain.items()
        if v[0] > max_gain
        and v[2] >= min_out_std
        and (m not in tied_mods or v[2] > math.sqrt(2 * excess_bar))
    ]
    bad_layers.sort(key=lambda t: -t[1])
    # A cross-entropy over logits that a learned temperature multiplies starts where that
    # temperature puts it (CLIP inits exp(t) = 1/0.07 on purpose) and the temperature trains:
    # a loss above ln C there says nothing about the init.
    ce = _first_ce(tl) if not temperatures else None
    # Multi-hot targets read as probabilities (TD511) start at about k x ln C for k labels a
    # row: the loss is high because of the targets, not the init.
    if ce is not None and any(multi_hot_rows(s) for s in loss_sites(tl).values()):
        ce = None
    bad_ce = None
    if ce is not None:
        step, value, classes = ce
        expected = math.log(classes) if classes > 1 else 0.0
        bar = max(ce_factor * expected, expected + ce_margin)
        uniform = _uniform_ce(tl, step)
        # The same logits against a target they cannot know: when that is not high, the
        # logits are small and the loss is high because of how the target enters them (a
        # margin subtracted from the target logit: ArcFace, CosFace), not because of the init.
        if math.isfinite(value) and value > bar and (uniform is None or uniform > bar):
            bad_ce = (step, value, classes, expected)
    if not bad_layers and bad_ce is None:
        return
    calls = tl.events("cross_entropy_call")
    source = calls[0].get("source") if calls else None
    evidence: dict = {}
    layer = None
    if bad_layers:
        layer, g, o = bad_layers[0]
        evidence["final_layers"] = {
            m: {"gain": gain[m][0], "input_std": gain[m][1], "output_std": gain[m][2]}
            for m in final
            if m in gain
        }
    if bad_ce is not None:
        step, value, classes, expected = bad_ce
        evidence.update(
            {"first_loss": value, "classes": classes, "ln_classes": expected, "step": step}
        )
    if bad_ce is not None and bad_layers:
        title = (
            f"loss at init {fmt(bad_ce[1])} vs ln {bad_ce[2]} = {bad_ce[3]:.2f}: final layer "
            f"`{layer}` multiplies its input's std by {gain[layer][0]:.1f}"
        )
    elif bad_ce is not None:
        title = (
            f"cross-entropy at init is {fmt(bad_ce[1])}, far above ln {bad_ce[2]} = "
            f"{bad_ce[3]:.2f} (uniform predictions)"
        )
    else:
        title = (
            f"final layer `{layer}` starts with output std {fmt(gain[layer][2])}, "
            f"{gain[layer][0]:.1f}x its input's {fmt(gain[layer][1])}"
        )
    tie = _tie_of(ties, params, tl.fact("module_types") or {}, layer)
    if tie is not None:
        name, others, std, fan_in, holder = tie
        scale = (
            f"{gain[layer][0]:.1f}x its input's std at the first steps"
            if layer is not None
            else "large at init"
        )
        cause = (
            f"the final layer's weight is tied: `{name}` is also `{'`, `'.join(others)}` (one "
            f"tensor), so the output layer starts with the init of {holder}"
            + (f" (std {fmt(std)} at attach" if std is not None else " (")
            + (f", over a fan-in of {fan_in}" if fan_in else "")
            + f"): its output is {scale}, so the model starts with large, confident logits "
            "and large gradients flow back from the loss"
        )
        fix = (
            f"initialize the shared weight `{name}` for both of its uses, small: "
            f"nn.init.normal_(w, 0, {fan_in or 'd'} ** -0.5) (the scale of 'Attention is all "
            "you need', whose embedding is multiplied by sqrt(d) on the input side), or std "
            f"0.02 as GPT-2; re-initializing the output layer alone re-initializes {holder} "
            "too (one tensor)"
        )
    elif layer is not None:
        cause = (
            f"`{layer}` is initialized with weights too large for its fan-in: its output std is "
            f"{gain[layer][0]:.1f}x its input's at the first steps, so the model starts with large, "
            "confident outputs and large gradients flow back from the loss"
        )
        fix = (
            f"initialize `{layer}` with a small std (nn.init.normal_(weight, std=0.01), bias 0) "
            "or keep PyTorch's default init; do not re-init it with std=1"
        )
    else:
        final_out = {m: gain[m][2] for m in final if m in gain}
        big = max(final_out, key=lambda m: final_out[m]) if final_out else None
        cause = (
            f"the model's first predictions are confidently wrong (loss {fmt(bad_ce[1])} where "
            f"an unsure model gives {bad_ce[3]:.2f}): the logits are large at init"
            + (f" (`{big}` outputs std {fmt(final_out[big])})" if big is not None else "")
            + "; usual causes are inputs that are not normalized, a final layer or bias "
            "initialized too large, or logits multiplied by a large temperature"
        )
        fix = (
            "normalize the inputs (zero mean, unit std per feature), and initialize the final "
            "layer small (std 0.01, bias 0 or log class priors) so the first loss is ≈ ln C"
        )
    yield tl.finding(
        title=title,
        step=bad_ce[0] if bad_ce is not None else gain[layer][3],
        evidence=evidence,
        where=Where(
            module=layer,
            params=(
                (tie[0], *tie[1])
                if tie is not None
                else (params_of(params, layer) if layer else ())
            ),
            source=source,
        ),
        cause=cause,
        fix=fix,
    )


def _tie_of(
    ties: dict[str, dict], params: dict, types: dict[str, str], layer: str | None
) -> tuple[str, list[str], float | None, int | None, str] | None:
    """(name, other names, std at attach, fan-in, what holds it) of the tied final weight
    behind `layer` (any tied final weight when no layer is named), or None."""
    for name, tie in ties.items():
        others = list(tie.get("also") or [])
        holders = [n.rsplit(".", 1)[0] if "." in n else "<model>" for n in [name, *others]]
        if layer is not None and layer not in holders:
            continue
        shape = (params.get(name) or {}).get("shape") or []
        fan_in = int(shape[1]) if len(shape) == 2 else None
        embedding = next((h for h in holders if types.get(h) == "Embedding"), None)
        holder = f"the embedding `{embedding}`" if embedding else f"`{holders[0]}`"
        return name, others, tie.get("std"), fan_in, holder
    return None


def _learned_scalars(params: dict, final_params: list[str]) -> set[str]:
    """The final params that are trainable one-element tensors (a learned temperature); a
    layer's `bias` of one output (a Linear(d, 1) head) is not one."""
    return {
        p
        for p in final_params
        if (params.get(p) or {}).get("numel") == 1
        and (params.get(p) or {}).get("requires_grad")
        and p.rsplit(".", 1)[-1] != "bias"
    }


def _only_scalars(module: str, final_params: list[str], scalars: set[str]) -> bool:
    mine = [p for p in final_params if (p.rsplit(".", 1)[0] if "." in p else "<model>") == module]
    return bool(mine) and all(p in scalars for p in mine)


def _first_gains(tl: TimelineView, final: list[str]) -> dict[str, tuple[float, float, float, int]]:
    """{final module: (gain, input std, output std, step)} measured before the first update."""
    ins = [(step, v) for step, v in tl.series("init.in_std") if step <= FIRST_STEP]
    outs = dict(tl.series("init.out_std"))
    found: dict[str, tuple[float, float, float, int]] = {}
    for step, by_module in ins:
        for m in final:
            if m in found or m not in by_module or m not in (outs.get(step) or {}):
                continue
            i, o = by_module[m], outs[step][m]
            if i is None or o is None or not (math.isfinite(i) and math.isfinite(o)) or i <= 0:
                continue
            found[m] = (o / i, i, o, step)
    return found


def _uniform_ce(tl: TimelineView, step: int) -> float | None:
    """Mean over the step's cross-entropy calls of the loss against a uniform target."""
    values = dict(tl.series("init.ce_uniform")).get(step) or {}
    finite = [v for v in values.values() if isinstance(v, int | float) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _first_ce(tl: TimelineView) -> tuple[int, float, int] | None:
    """(step, mean value, classes) of the cross-entropy calls before the first update, but
    those whose logits are cosines times a constant (init.ce_cosine: set by s, not the init)."""
    classes = dict(tl.series("init.ce_classes"))
    cosine = dict(tl.series("init.ce_cosine"))
    for step, values in tl.series("init.ce_loss"):
        if step > FIRST_STEP:
            break
        cs = classes.get(step) or {}
        scaled = cosine.get(step) or {}
        pairs = [
            (v, cs[k]) for k, v in values.items() if k in cs and v is not None and k not in scaled
        ]
        pairs = [(v, c) for v, c in pairs if math.isfinite(v)]
        if pairs:
            return step, sum(v for v, _ in pairs) / len(pairs), max(c for _, c in pairs)
    return None

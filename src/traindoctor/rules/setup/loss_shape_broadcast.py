"""TD508 loss-shape-broadcast."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import loss_went
from ._loss_inputs import Site, label_histograms, loss_sites

# Elementwise losses that broadcast prediction against target instead of refusing.
ELEMENTWISE = (
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "kl_div",
    "poisson_nll_loss",
    "soft_margin_loss",
)
CLASS_LOSSES = ("cross_entropy", "nll_loss")
LOW_PRECISION = ("float16", "bfloat16")


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@rule(
    code="TD508",
    name="loss-shape-broadcast",
    severity=Severity.ERROR,
    summary="Prediction and target shapes broadcast into a larger tensor inside the loss, or "
    "the loss reduces over a different dim than the one the model normalized or produced.",
    requires=("loss_inputs.stats", "loss_inputs.labels"),
    events=("loss_call_reversed", "loss_input"),
    priority=17,
)
def loss_shape_broadcast(
    tl: TimelineView,
    *,
    norm_tol: float = 1e-3,
    off_by: float = 0.05,
) -> Iterator[Finding]:
    """
    ## What it detects
    A loss whose shapes line up only by accident, so it compares the wrong numbers:
    - **broadcast**: an elementwise loss (`mse_loss`, `l1_loss`, `smooth_l1_loss`,
      `huber_loss`, `kl_div`, `poisson_nll_loss`) given a prediction and a target of different
      shapes that broadcast into a larger tensor: `(B, 1)` against `(B,)` becomes `(B, B)`;
      also when the prediction is passed second, as the target (`F.mse_loss(td_target, q)`:
      the argument that requires grad is the second);
    - **normalized over the wrong dim**: (log-)probabilities normalized along one dim fed to a
      loss that reads the distribution along another: `F.log_softmax(x, dim=0)` (the batch) into
      `nll_loss`, whose classes are dim 1; `nn.Softmax(dim=0)` in front of `cross_entropy`; an
      implicit `F.log_softmax(x)` on a 3-D `(B, T, C)` tensor, which normalizes dim 0;
      `log_softmax(dim=-1)` of `(B, T, C)` given to `nll_loss` as is; a `kl_div` whose input and
      target are distributions along different dims; `F.log_softmax(x, dim=1)` of `(B, T, C)`
      scores viewed as `(B*T, C)` for `nll_loss`, or for a label-smoothing `kl_div` whose
      target rows are distributions (the pad rows' all-zero targets left out), the normalized
      dim merged away by the view, the classes read along another dim of the softmax's output;
    - **classes in the wrong dim**: `cross_entropy`/`nll_loss` read the classes along dim 1 of
      a `(N, C, d1, ...)` input, but the layer that produced it (a `Linear`'s features, a conv's
      channels) put them elsewhere: `(B, T, C)` logits given as is when `T == C` (so torch does
      not complain), or scrambled by a `view`/`reshape` used as a transpose
      (`logits.view(B, C, T)` of a `(B, T, C)` tensor);
    - **targets flattened in the other order**: `(B*T,)` token targets beside logits flattened
      from `(B, T, C)` whose `(B, T)` is the shape of the ids an `nn.Embedding` read, that are
      the next ids (on every measured call, 1st, 2nd, 4th, ...) only when read `(T, B)`
      (`y.t().reshape(-1)` beside `logits.reshape(-1, C)`): each row is scored against another
      sequence's token, and the model learns only the tokens' frequencies.

    The finding names the shapes, the dim the model normalized or produced along, the dim the
    loss reduces over, and the line.

    ## Why it matters
    Each of these runs without an error and gives a finite loss that even goes down, so
    training looks normal while the model learns something else: a constant (broadcast), to
    rank the samples of a batch against each other (normalized over the batch), or labels
    paired with the wrong positions (a reshape is not a transpose). Accuracy ends up
    mediocre, or fine on the training batches and poor on anything batched differently.

    ## How it is measured
    The loss-inputs probe wraps the standard losses. For a new call site or new shapes it reads
    host metadata only: both shapes (the broadcast shape from `torch.broadcast_shapes`) and
    the autograd nodes below the input, following view, permute and transpose nodes down to
    the op that made it (their saved sizes and dims), so it knows along which dim of the loss
    input a Linear's features, a conv's channels or a softmax's normalized dim end up, and
    whether a `view`/`reshape` reordered the sizes, and where each dim of a softmax's output
    ends up in the loss input. For inputs made by a softmax/log_softmax
    and for the inputs of `nll_loss`/`kl_div`, on the site's 1st, 2nd, 4th, 8th, ... observed
    call, it measures on the device how far the input is from normalized along each dim (the
    largest |logsumexp| for log-probabilities, |sum - 1| for probabilities, one reduction per
    dim, read back with the other stats), and the same for a float target of the input's
    shape. The rule fires when the input is normalized (within `norm_tol`) along another dim
    and off by more than `off_by` along the dim the loss reads (the class dim, or the dim the
    target is normalized along); steps where both hold (a near-uniform input at init) decide
    nothing. In float16/bfloat16 the tolerances are 0.05 and 0.3.

    ## Example
    ```python
    pred = model(x)                             # (B, 1)
    loss = F.mse_loss(pred, y)                  # y: (B,) -> broadcast to (B, B)

    logp = F.log_softmax(model(x), dim=0)       # (B, C): each class sums to 1 over the batch
    loss = F.nll_loss(logp, y)

    logits = model(tokens)                      # (B, T, C)
    loss = F.cross_entropy(logits.view(B, C, T), tags)   # reshape, not transpose
    ```

    ## Fix
    ```python
    loss = F.mse_loss(pred.squeeze(1), y)             # or y.unsqueeze(1): the same shapes
    loss = F.nll_loss(F.log_softmax(model(x), dim=1), y)   # or F.cross_entropy on logits
    loss = F.cross_entropy(logits.transpose(1, 2), tags)   # or logits.flatten(0, 1), tags.flatten()
    ```

    ## Known false positives
    A deliberate all-pairs loss written through broadcasting (rare with these functions; a
    pairwise loss is usually written with explicit `unsqueeze` before subtraction, which is not
    a loss call). A listwise loss that normalizes over the batch on purpose and feeds it to
    `nll_loss` as if the batch were the classes (write it with the list as dim 1); a square
    contrastive similarity matrix normalized over dim 0 with `arange(N)` targets is recognized
    (each label once) and not reported up to 64 classes, beyond which labels are not counted. A
    final
    `Linear` applied over the last (sequence) dim while the classes sit in dim 1 with as many
    classes as positions. A `view` that reorders sizes on a tensor whose values were laid out
    that way on purpose.
    """
    hists = label_histograms(tl)
    sites = loss_sites(tl)
    for site in _reversed_sites(tl, sites).values():
        finding = _broadcast(tl, site)
        if finding is not None:
            yield finding
    for site in sites.values():
        finding = (
            _broadcast(tl, site)
            or _normalized(tl, site, norm_tol, off_by, dict(hists.get(site.id, [])))
            or _layout(tl, site)
            or _flattened_flipped(tl, site)
        )
        if finding is not None:
            yield finding


def _flattened_flipped(tl: TimelineView, site: Site) -> Finding | None:
    """(N*T,) targets that are the next token ids of the (N, T) inputs only when read in
    (T, N) order, beside logits flattened from (N, T, C) (`y.t().reshape(-1)` beside
    `logits.reshape(-1, C)`), on every measured call: each logit row is scored against
    another sequence's token."""
    flipped = site.values("ids_next_t")
    if len(flipped) < 2 or any(v < 0.999 for _, v in flipped):
        return None
    direct = [v for _, v in site.values("ids_next")] + [v for _, v in site.values("ids_same")]
    if not direct or max(direct) >= 0.5:
        return None
    losses = site.losses()
    went = loss_went(losses)
    shape = site.facts.get("target_shape")
    return tl.finding(
        title=f"`{site.fn}` at {site.source}: the flattened targets"
        f"{f' {tuple(shape)}' if shape else ''} are laid out (time, batch), the logits "
        "(batch, time): each logit row is scored against another sequence's token",
        severity=Severity.WARNING,
        step=flipped[0][0],
        evidence={
            "loss_fn": site.fn,
            "target_shape": shape,
            "share_next_ids_read_time_major": min(v for _, v in flipped),
            "share_next_ids_read_as_given": max(direct),
            "measured_calls": len(flipped),
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"read in (time, batch) order, {min(v for _, v in flipped):.1%} of the targets "
        "are the next token of the ids an nn.Embedding read, on every measured call; read "
        f"in the (batch, time) order of the logits they are scored against, {max(direct):.1%} "
        "are: the targets were flattened after a transpose (or from a time-major tensor) and "
        "the logits without one, so the model can learn only how often each token occurs" + went,
        fix="flatten both in the same order: `loss = ce(logits.reshape(-1, C), y.reshape(-1))` "
        "with y (batch, time) like the logits (or transpose the logits too)",
        confidence=0.9,
    )


def _reversed_sites(tl: TimelineView, sites: dict[int, Site]) -> dict[int, Site]:
    """Elementwise loss calls whose second argument is the one that requires grad (the
    prediction passed as the target: `F.mse_loss(td_target, q_values)`), from their
    `loss_call_reversed` events; a site also seen the usual way is judged there."""
    out: dict[int, Site] = {}
    for e in tl.events("loss_call_reversed"):
        sid = e.get("site")
        if not isinstance(sid, int) or sid in sites:
            continue
        site = out.get(sid)
        if site is None:
            site = out[sid] = Site(sid, e)
        site.events.append(e)
    return out


def _broadcast(tl: TimelineView, site: Site) -> Finding | None:
    if site.fn not in ELEMENTWISE:
        return None
    for e in site.events:
        shape = e.get("broadcast_shape")
        a, b = e.get("input_shape") or [], e.get("target_shape") or []
        if not shape or _numel(shape) <= max(_numel(a), _numel(b)):
            continue
        grow = _numel(shape) / max(_numel(a), _numel(b), 1)
        reversed_args = e.get("kind") == "loss_call_reversed"
        pred, tgt = (b, a) if reversed_args else (a, b)
        args = (
            f"prediction {tuple(pred)} (passed 2nd, as the target: it is the argument that "
            f"requires grad) against target {tuple(tgt)}"
            if reversed_args
            else f"prediction {tuple(a)} against target {tuple(b)}"
        )
        return tl.finding(
            title=f"`{site.fn}` at {site.source} broadcasts {args} into {tuple(shape)} "
            f"({grow:.0f}x the elements)",
            step=e.get("step"),
            evidence={
                "case": "broadcast",
                "loss_fn": site.fn,
                "input_shape": a,
                "target_shape": b,
                "prediction_shape": pred,
                "prediction_argument": 2 if reversed_args else 1,
                "broadcast_shape": shape,
                "element_ratio": grow,
                "code": e.get("code"),
            },
            where=Where(op=site.fn, source=site.source),
            cause="the shapes differ and broadcast: every prediction is compared with "
            f"every target of the batch ({tuple(shape)}), so the minimum is the batch "
            "mean of the targets and the model learns a constant",
            fix="give prediction and target the same shape: `pred.squeeze(-1)` or "
            "`target.unsqueeze(-1)` (or `.view_as(pred)`) before the loss",
            confidence=0.95,
        )
    return None


def _dims(stats: dict[str, float], prefix: str) -> dict[int, float]:
    out = {}
    for key, value in stats.items():
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            out[int(key[len(prefix) :])] = value
    return out


def _name(dim: int, shape: list[int], role: str | None = None) -> str:
    size = f"size {shape[dim]}" if 0 <= dim < len(shape) else "size ?"
    return f"dim {dim} ({size}{', ' + role if role else ''})"


def _matching(e: dict[str, Any], counts: list[float] | None) -> bool:
    """A square (N, N) input whose N labels are each class exactly once (`arange(N)` in a
    contrastive loss): normalizing over dim 0 scores the transposed matching, on purpose."""
    shape = e.get("input_shape") or []
    return (
        len(shape) == 2
        and shape[0] == shape[1]
        and bool(counts)
        and len(counts) == shape[1]
        and all(c == 1 for c in counts)
    )


def _normalized(
    tl: TimelineView, site: Site, tol: float, off_by: float, hist: dict[int, list[float]]
) -> Finding | None:
    facts = site.facts
    # The values' own dtype too: a bfloat16 log_softmax cast to float32 is rounded as bfloat16.
    if any(str(facts.get(k)) in LOW_PRECISION for k in ("input_dtype", "values_dtype")):
        tol, off_by = max(tol, 0.05), max(off_by, 0.3)
    class_dim = facts.get("class_dim")
    index_target = site.fn in CLASS_LOSSES and not facts.get("target_float")
    decided: list[tuple[int, int, list[int], dict[int, float], str]] = []
    for step, stats in sorted(site.stats.items()):
        space, dev = "l", _dims(stats, "lnorm")
        if not dev:
            space, dev = "p", _dims(stats, "pnorm")
        if not dev:
            continue
        if index_target:
            if _matching(_event_at(site, step), hist.get(step)):
                continue
            expected = [class_dim] if isinstance(class_dim, int) else []
        else:
            target = _dims(stats, "tnorm")
            expected = [d for d, v in target.items() if v <= tol]
            if not expected and site.fn in CLASS_LOSSES and isinstance(class_dim, int):
                expected = [class_dim]  # probability targets that are not normalized
        expected = [d for d in expected if d in dev]
        if not expected:
            continue
        if any(dev[d] <= tol for d in expected):
            return None  # normalized where the loss reads it (also along another: Sinkhorn)
        if min(dev[d] for d in expected) <= off_by:
            continue  # near-uniform: normalized everywhere within off_by, undecided
        wrong = sorted(d for d, v in dev.items() if v <= tol and d not in expected)
        if wrong:
            decided.append((step, wrong[0], expected, dev, space))
        else:  # also a float target: label smoothing's KLDiv over (B*T, V) log-probs
            merged = _softmax_elsewhere(_event_at(site, step), expected)
            if merged is not None:
                return _softmax_dim_lost(tl, site, step, expected, dev, space, merged, off_by)
    if not decided:
        return None
    step, wrong, expected, dev, space = decided[0]
    e = _event_at(site, step)
    shape = e.get("input_shape") or []
    lay = e.get("layout") or {}
    what = "log-probabilities" if space == "l" else "probabilities"
    made = ""
    if lay.get("softmax_dim") is not None and lay.get("head_dim") == wrong:
        op = "log_softmax" if lay.get("head_op") == "LogSoftmaxBackward0" else "softmax"
        of = lay.get("softmax_shape")
        of = f" of {tuple(of)}" if isinstance(of, list) else ""
        made = f" (from a {op} over dim {lay['softmax_dim']}{of})"
    batch = " the batch" if wrong == 0 else None
    exp_name = ", ".join(
        _name(d, shape, "the classes" if index_target or d == class_dim else "the target's")
        for d in expected
    )
    reads = (
        f"reads the classes along {exp_name}"
        if index_target
        else f"compares them with a target normalized along {exp_name}"
    )
    measure = "logsumexp" if space == "l" else "sum"
    goal = "0" if space == "l" else "1"
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets {what} normalized over "
        f"{_name(wrong, shape, batch.strip() if batch else None)} of {tuple(shape)}{made}, "
        f"but {reads}",
        step=step,
        evidence={
            "case": "normalized_dim",
            "loss_fn": site.fn,
            "input_shape": shape,
            "target_shape": e.get("target_shape"),
            "normalized_dim": wrong,
            "loss_dims": expected,
            f"max_abs_{measure}_dev": {f"dim {d}": float(f"{v:.3g}") for d, v in dev.items()},
            "softmax_dim": lay.get("softmax_dim"),
            "code": e.get("code"),
            "steps_decided": [d[0] for d in decided],
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"the {measure} of the input over dim {wrong} is {goal} for every slice (within "
        f"{tol:g}) while over {', '.join(f'dim {d}' for d in expected)} it is off by up to "
        f"{min(dev[d] for d in expected):.3g}: the input was normalized over the wrong dim, so "
        f"the loss compares {'each sample with the others of the batch' if wrong == 0 else 'the wrong slices'} "
        "instead of the classes of each sample",
        fix=f"normalize over the dim the loss reads: `F.log_softmax(x, dim={expected[0]})` "
        f"(`dim=-1` for (N, C) logits; an implicit `F.log_softmax(x)` picks dim 0 for 3-D "
        "inputs), or pass the logits to `F.cross_entropy` and drop the softmax",
        confidence=0.9,
    )


def _softmax_elsewhere(e: dict[str, Any], expected: list[int]) -> int | None:
    """The dim of a softmax/log_softmax's output that the loss reads as its classes, when the
    softmax normalized another dim of that output, one the views between merged into another
    dim of the loss input (so no dim of the input is normalized): `log_softmax(x, dim=1)` of
    (B, T, V) viewed as (B*T, V) for `nll_loss`. Host metadata of the graph only."""
    lay = e.get("layout") or {}
    sdim, ends = lay.get("softmax_dim"), lay.get("softmax_dims_in_input")
    if not isinstance(sdim, int) or not isinstance(ends, list) or len(expected) != 1:
        return None
    if sdim >= len(ends) or ends[sdim] is not None:
        return None  # it survives as a dim of the input: the measured dims judge it
    read = [d for d, end in enumerate(ends) if end == expected[0]]
    return read[0] if read and read[0] != sdim else None


def _softmax_dim_lost(
    tl: TimelineView,
    site: Site,
    step: int,
    expected: list[int],
    dev: dict[int, float],
    space: str,
    read: int,
    off_by: float,
) -> Finding:
    e = _event_at(site, step)
    shape = e.get("input_shape") or []
    lay = e.get("layout") or {}
    sdim = lay["softmax_dim"]
    of = lay.get("softmax_shape") or []
    op = "log_softmax" if lay.get("head_op") == "LogSoftmaxBackward0" else "softmax"
    cdim = expected[0]
    measure = "logsumexp" if space == "l" else "sum"
    goal = "0" if space == "l" else "1"
    return tl.finding(
        title=f"`{site.fn}` at {site.source} reads the classes along {_name(cdim, shape)} of "
        f"{tuple(shape)}, which is dim {read} of a {op} over dim {sdim} of {tuple(of)}: the "
        "distribution was normalized over another dim",
        step=step,
        evidence={
            "case": "normalized_dim",
            "loss_fn": site.fn,
            "input_shape": shape,
            "target_shape": e.get("target_shape"),
            "normalized_dim": None,
            "loss_dims": expected,
            "softmax_dim": sdim,
            "softmax_shape": of,
            "softmax_dim_read_as_classes": read,
            f"max_abs_{measure}_dev": {f"dim {d}": float(f"{v:.3g}") for d, v in dev.items()},
            "code": e.get("code"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"the {op} normalized dim {sdim} (size {of[sdim] if sdim < len(of) else '?'}) "
        f"of its {tuple(of)} output, and a view merged that dim into another before the "
        f"loss; the loss reads its classes along dim {read} of that output, over which the "
        f"{measure} is off from {goal} by up to {dev[cdim]:.3g} (more than {off_by:g}): each "
        "position's scores are normalized across positions, not across its classes",
        fix=f"normalize over the classes: `F.{op}(x, dim={read})` (or `dim=-1` for "
        "(B, T, C) scores), or pass the raw scores to `F.cross_entropy`",
        confidence=0.9,
    )


def _event_at(site: Site, step: int) -> dict[str, Any]:
    before = [e for e in site.events if isinstance(e.get("step"), int) and e["step"] <= step]
    return before[-1] if before else site.facts


def _layout(tl: TimelineView, site: Site) -> Finding | None:
    for e in site.events:
        lay = e.get("layout") or {}
        shape = e.get("input_shape") or []
        reordered = lay.get("view_reordered")
        if (
            site.fn in CLASS_LOSSES
            and not e.get("target_float")
            and lay.get("head_features") is not None
            and isinstance(e.get("class_dim"), int)
            and len(shape) >= 2
        ):
            cdim = e["class_dim"]
            feats = lay["head_features"]
            hdim = lay.get("head_dim")
            if hdim != cdim and shape[cdim] == feats:
                return _wrong_class_dim(tl, site, e, shape, cdim, hdim, feats, reordered)
        if reordered:
            return _view_reordered(tl, site, e, reordered)
    return None


def _head(lay: dict[str, Any]) -> str:
    op = lay.get("head_op")
    kind = "Linear" if op in ("AddmmBackward0", "MmBackward0") else "conv"
    module = lay.get("head_module")
    return f"`{module}` ({kind})" if module else f"the {kind} layer"


def _wrong_class_dim(
    tl: TimelineView,
    site: Site,
    e: dict[str, Any],
    shape: list[int],
    cdim: int,
    hdim: int | None,
    feats: int,
    reordered: list[list[int]] | None,
) -> Finding:
    lay = e.get("layout") or {}
    head = _head(lay)
    feat_word = "features" if "Linear" in head else "channels"
    if hdim is None:
        where = "a `.view`/`.reshape` split them across dims"
        if reordered:
            where = (
                f"`.view`/`.reshape` turned {tuple(reordered[0])} into {tuple(reordered[1])}, "
                "which is not a transpose, and scattered them"
            )
        where = f"{head} produced {feats} {feat_word} and {where}"
    else:
        where = f"{head} produced its {feats} {feat_word} along {_name(hdim, shape)}"
    swap = f"`.transpose({cdim}, {hdim})`" if hdim is not None else "`.transpose(1, -1)`"
    return tl.finding(
        title=f"`{site.fn}` at {site.source} reads the classes along {_name(cdim, shape)} of "
        f"{tuple(shape)}, but {where}",
        step=e.get("step"),
        evidence={
            "case": "class_dim",
            "loss_fn": site.fn,
            "input_shape": shape,
            "target_shape": e.get("target_shape"),
            "class_dim": cdim,
            "head_dim": hdim,
            "head": lay.get("head_module") or lay.get("head_op"),
            "head_features": feats,
            "view_reordered": reordered,
            "code": e.get("code"),
        },
        where=Where(module=lay.get("head_module"), op=site.fn, source=site.source),
        cause=f"{site.fn} takes dim {cdim} as the classes of an (N, C, d1, ...) input; the "
        f"{feat_word} of {head} are not there, and the shapes match only because "
        + (
            f"dim {cdim} happens to have {feats} entries too"
            if hdim is not None
            else f"a reshape gave dim {cdim} {feats} entries without moving the values"
        )
        + ", so torch raised nothing: each label is scored against values of other "
        "positions and classes",
        fix=f"move the classes to dim {cdim} with a transpose, not a view: {swap} or "
        "`.permute(...)`, or flatten both (`logits.flatten(0, -2)`, `target.flatten()`)",
        confidence=0.85,
    )


def _view_reordered(
    tl: TimelineView, site: Site, e: dict[str, Any], reordered: list[list[int]]
) -> Finding:
    src, dst = reordered
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets a `.view`/`.reshape` of {tuple(src)} into "
        f"{tuple(dst)}: the sizes are reordered, the values are not (a reshape is not a "
        "transpose)",
        step=e.get("step"),
        evidence={
            "case": "view_reordered",
            "loss_fn": site.fn,
            "input_shape": e.get("input_shape"),
            "target_shape": e.get("target_shape"),
            "view_from": src,
            "view_to": dst,
            "code": e.get("code"),
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"reshaping {tuple(src)} to {tuple(dst)} keeps the memory order, so each slice "
        "of the result mixes values of different positions/classes; the loss compares them "
        "with targets laid out the other way",
        fix="use `.transpose(a, b)` or `.permute(...)` to reorder dims (then `.reshape` if "
        "needed), e.g. `logits.transpose(1, 2)` for (B, T, C) -> (B, C, T)",
        confidence=0.85,
    )

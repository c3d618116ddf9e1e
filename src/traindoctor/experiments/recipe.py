"""Karpathy's recipe on a copy ("A Recipe for Training Neural Networks", 2019), automated.

`run_recipe(setup)` returns one `experiment` event payload per experiment (schema.Experiment):
init_loss, overfit_one_batch, lr_probe (whether the lr is the cause, from the overfit's lr grid
and, where it blew up even at 0.1x, lower lrs), input_independent, batch_independence. Each is
isolated
(runner.isolated: the user's RNG forked and restored) and any error inside one is caught and
recorded as its verdict ("error"), never raised.
"""

from __future__ import annotations

import math
import time
import traceback
from typing import Any

import torch

from .._graph import node_source
from ..probes.base import iter_tensors
from .runner import Curve, Replay, Setup, base_lr, fresh_copy, isolated, train_copy, zeroed

OVERFIT_STEPS = 50  # optimizer steps of each overfit-one-batch run
LR_GRID = (1.0, 10.0, 0.1)  # tried in this order until one fits
LR_EXTRA = (100.0, 1000.0)  # when nothing moved at all on the grid
LR_LOWER = (0.01, 0.001)  # the lr probe, when the loss blows up even at 0.1x
FIT_RATIO = 0.1  # fits: the loss above its floor falls to 10% of where it started
FIT_LIMIT = 0.5  # cannot fit: above 50% of where it started at every lr of the grid
BARELY = 0.9  # the lr probe's "too low": the script's lr leaves more than 90% of the loss
INPUT_STEPS = 50  # steps of the input-independent baseline (as the overfit run)
MIX_TOL = 1e-6  # |d out[i] / d in[j]| over |d out[i] / d in[i]| above this: the batch mixes
ROUND = 5


def run_recipe(setup: Setup) -> list[dict[str, Any]]:
    batch = setup.batch
    assert batch is not None
    base = {"loss_fn": batch.loss_fn, "source": batch.source}
    if batch.several_losses:
        base["facts"] = {"several_losses": True}
    out = []
    overfit: dict[str, Any] | None = None
    for name, fn in (
        ("init_loss", _init_loss),
        ("overfit_one_batch", _overfit),
        ("lr_probe", _lr_probe),
        ("input_independent", _input_independent),
        ("batch_independence", _batch_independence),
    ):
        t0 = time.perf_counter()
        try:
            with isolated(setup.model):
                uses = name in ("input_independent", "lr_probe")
                event = fn(setup, overfit) if uses else fn(setup)
        except Exception as exc:  # noqa: BLE001  (an experiment never reaches the user)
            event = {
                "verdict": "error",
                "reason": f"{type(exc).__name__}: {exc}"[:300],
                "facts": {"traceback": traceback.format_exc(limit=3)[-800:]},
            }
        if name == "overfit_one_batch":
            overfit = {**event, "facts": dict(event.get("facts", {}))}
        facts = {**base.get("facts", {}), **event.pop("facts", {})}
        out.append(
            {
                **base,
                "name": name,
                "seconds": round(time.perf_counter() - t0, 3),
                "steps": event.pop("steps", 0),
                **event,
                "facts": facts,
            }
        )
    return out


def _floor(setup: Setup) -> float | None:
    """The loss's floor on this batch when it is 0 (hard targets), else None (unknown)."""
    b = setup.batch
    assert b is not None
    if b.loss_fn in ("cross_entropy", "nll_loss"):
        smoothing = b.loss_args[3] if b.loss_fn == "cross_entropy" and len(b.loss_args) > 3 else 0
        smoothing = b.loss_kwargs.get("label_smoothing", smoothing)
        if b.target.is_floating_point() or (smoothing or 0) > 0:
            return None
        return 0.0
    if b.loss_fn in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"):
        return 0.0
    if b.loss_fn in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
        t = b.target
        hard = bool(((t == 0) | (t == 1)).all())
        return 0.0 if hard else None
    return None


def _init_loss(setup: Setup) -> dict[str, Any]:
    b = setup.batch
    assert b is not None
    model = fresh_copy(setup)
    replay = Replay(b)
    with torch.no_grad():
        value = float(replay.loss(model, b.args, b.kwargs))
    facts: dict[str, Any] = {"measured": round(value, ROUND)}
    classes = b.classes
    if classes is not None and classes >= 2 and b.loss_fn in ("cross_entropy", "nll_loss"):
        # The same loss call (weights, reduction, ignore_index, smoothing) on uniform
        # predictions: zero logits, or log(1/C) log-probabilities for nll_loss.
        fill = 0.0 if b.loss_fn == "cross_entropy" else -math.log(classes)
        with torch.no_grad():
            uniform = torch.full(b.input_size, fill, device=b.target.device)
            expected = float(_reduced(replay.fn(uniform, b.target, *b.loss_args, **b.loss_kwargs)))
        facts.update(classes=classes, expected=round(expected, ROUND))
        facts["per_example_expected"] = round(math.log(classes), ROUND)
        facts["what"] = (
            f"{b.loss_fn} of the initial weights on the captured batch of step {b.step}, against "
            f"the same call on uniform predictions ({expected:.4g}; ln {classes} = "
            f"{math.log(classes):.3f} per example)"
        )
        ref = max(abs(expected), 1e-12)
        per = abs(expected) / max(math.log(classes), 1e-12)  # examples summed (1 for a mean)
        if not math.isfinite(value):
            verdict = "nonfinite"
        elif value > 3 * ref and value - ref > 1.0 * per:
            verdict = "too_high"
        elif value < ref / 3 and ref - value > 0.5 * per:
            verdict = "too_low"
        else:
            verdict = "ok"
        return {"verdict": verdict, "facts": facts}
    if b.loss_fn in ("mse_loss",) and b.target.is_floating_point():
        # Predicting the target's mean would give its variance; predicting 0, its mean square.
        t = b.target.double()
        facts["target_var"] = round(float(t.var(unbiased=False)), ROUND)
        facts["target_mean_square"] = round(float((t * t).mean()), ROUND)
    facts["what"] = f"{b.loss_fn} of the initial weights on the captured batch of step {b.step}"
    return {"verdict": "measured", "facts": facts}


def _reduced(t: torch.Tensor) -> torch.Tensor:
    return t if t.numel() == 1 else t.mean()


def _ratio(curve: Curve, floor: float | None) -> float:
    """How much of the distance to the floor is left at the best point of the curve."""
    if not curve.losses or not math.isfinite(curve.losses[0]):
        return math.inf
    start = curve.losses[0] - (floor or 0.0)
    if start <= 1e-12:
        return 0.0
    return max(0.0, (curve.best - (floor or 0.0)) / start)


def _blew_up(curve: Curve) -> bool:
    """The loss went non-finite or above 1.5x its start (the lr is too high for this run)."""
    values = curve.losses
    if curve.diverged or not values or not all(math.isfinite(v) for v in values):
        return True
    return max(values) > 1.5 * values[0] + 1e-12


def _still_falling(curve: Curve, floor: float | None, tail: int = 10) -> bool:
    """Whether the loss still falls at the end: over the last `tail` steps at a quarter or
    more of its average rate over the run (a slow, steady descent: more steps needed), and by
    more than 0.1% of its distance to the floor. A plateau, or a run that diverged or blew up
    above 1.5x its start, is not falling."""
    values = curve.losses
    if curve.diverged or len(values) <= tail + 1 or not math.isfinite(values[0]):
        return False
    if max(values) > 1.5 * values[0] + 1e-12:
        return False  # it blew up first (too high an lr): recovering is not converging
    total = values[0] - (floor or 0.0)
    overall = (values[0] - min(values)) / (len(values) - 1)
    recent = (values[-tail - 1] - min(values[-tail:])) / tail
    return total > 0 and overall > 0 and recent >= 0.25 * overall and recent * tail > 1e-3 * total


def _overfit(setup: Setup) -> dict[str, Any]:
    if setup.optimizer_class is None:
        return {
            "verdict": "not_measured",
            "reason": "no torch optimizer holds the model's params (updates by hand cannot be "
            "replayed)",
        }
    floor = _floor(setup)
    curves: dict[str, list[float]] = {}
    runs: dict[str, Curve] = {}
    ratios: dict[str, float] = {}
    seconds, steps = 0.0, 0
    verdict = "failed"
    fit_at = None
    grid = list(LR_GRID)
    while grid:
        scale = grid.pop(0)
        curve = train_copy(setup, OVERFIT_STEPS, lr_scale=scale)
        label = f"lr x{scale:g}"
        runs[label] = curve
        curves[label] = [round(v, ROUND) for v in curve.losses]
        ratios[label] = round(_ratio(curve, floor), 4)
        seconds += curve.seconds
        steps += len(curve.losses) - (0 if curve.diverged else 1)
        if ratios[label] <= FIT_RATIO:
            verdict, fit_at = "ok", scale
            break
        # Hardly anything moved at x0.1, x1 or x10 and nothing blew up: the lr may be far
        # too small to test anything; Karpathy's advice, raise it (x100, x1000).
        still = min(ratios.values()) > 0.95 and not any(_blew_up(c) for c in runs.values())
        if not grid and scale == LR_GRID[-1] and still:
            grid = list(LR_EXTRA)
    best = min(ratios.values())
    falling = [label for label, c in runs.items() if _still_falling(c, floor)]
    smallest = runs.get(f"lr x{min(LR_GRID):g}")
    if verdict != "ok":
        # With an unknown floor the curve must not even fall by 10%: conservative. A curve
        # still falling at its end (a small lr, a LoRA) is not a failure: more steps needed;
        # one that blows up even at the smallest lr says the lr is too high, not the model.
        limit = FIT_LIMIT if floor is not None else 0.9
        user = runs.get("lr x1")
        if (user is not None and _blew_up(user)) or (smallest is not None and _blew_up(smallest)):
            verdict = "lr_too_high"  # the user's lr (or even 0.1x) blows up on one batch
        elif best > limit and not falling:
            verdict = "failed"
        else:
            verdict = "partial"
    lrs = [base_lr(g[1]) for g in setup.groups]
    facts = {
        "ratios": ratios,
        "floor": floor,
        "fit_at_lr_scale": fit_at,
        "optimizer": setup.optimizer_class.__name__,
        "lr": [float(v) if v is not None else None for v in lrs],
        "k": OVERFIT_STEPS,
        "still_falling": falling,
    }
    return {"verdict": verdict, "curves": curves, "steps": steps, "facts": facts}


def _scale_of(label: str) -> float | None:
    try:
        return float(label.removeprefix("lr x"))
    except ValueError:
        return None


def _ended_up(curve: Curve) -> bool:
    """The curve ends non-finite, or above where it started."""
    values = curve.losses
    return bool(values) and (not math.isfinite(values[-1]) or values[-1] > values[0])


def _lr_probe(setup: Setup, overfit: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the lr is what keeps one batch from being fit: the overfit's curves at each lr
    of its grid (x1, x10, x0.1; x100, x1000 when nothing moved), and where the loss blew up at
    x1 and at x0.1 alike, the same K steps at x0.01 and x0.001 (stopping at the first that
    does not blow up). Verdicts: `fits_as_written` (x1 fits: the lr can train this model),
    `too_high` (x1 blows up or does not fit while a smaller lr fits or falls without blowing
    up), `too_low` (x1 leaves more than 90% of the loss while a larger lr fits), `not_the_lr` (no lr fits one batch
    and none blew up: the model or the loss), `inconclusive` otherwise."""
    if not overfit or overfit.get("verdict") in (None, "error", "not_measured"):
        return {"verdict": "not_measured", "reason": "overfit one batch did not run"}
    floor = _floor(setup)
    runs = {
        scale: Curve(
            losses=list(values), seconds=0.0, diverged=any(not math.isfinite(v) for v in values)
        )
        for label, values in (overfit.get("curves") or {}).items()
        if (scale := _scale_of(label)) is not None
    }
    curves: dict[str, list[float]] = {}
    steps = 0
    if 1.0 in runs and 0.1 in runs and _blew_up(runs[1.0]) and _blew_up(runs[0.1]):
        for scale in LR_LOWER:
            curve = train_copy(setup, OVERFIT_STEPS, lr_scale=scale)
            runs[scale] = curve
            curves[f"lr x{scale:g}"] = [round(v, ROUND) for v in curve.losses]
            steps += len(curve.losses) - (0 if curve.diverged else 1)
            if not _blew_up(curve):
                break
    ratios = {s: _ratio(c, floor) for s, c in runs.items()}
    blew = {s for s, c in runs.items() if _blew_up(c)}
    fits = {s for s, r in ratios.items() if r <= FIT_RATIO}  # as TD702 counts a fit
    # Falls clearly without blowing up: at least half-way to the floor, or still falling.
    falls = {
        s
        for s, r in ratios.items()
        if s not in blew and (r <= FIT_LIMIT or _still_falling(runs[s], floor))
    }
    user = runs.get(1.0)
    verdict, better = "inconclusive", None
    # The user's lr is implicated only when it left more than half of the loss, or blew up and
    # stayed up (non-finite, or above its start at the end): a transient spike that recovers
    # to fit the batch is not "the lr is the cause".
    stuck = user is not None and (ratios[1.0] > FIT_LIMIT or _ended_up(user))
    lower = sorted((s for s in fits | falls if s < 1.0), key=lambda s: (s not in fits, -s))
    higher = sorted(s for s in fits if s > 1.0)
    if user is not None and 1.0 in fits:
        verdict = "fits_as_written"
    elif stuck and lower and (1.0 in blew or lower[0] in fits):
        verdict, better = "too_high", lower[0]  # the largest lower lr that fits, else falls
    elif stuck and 1.0 not in blew and higher and ratios[1.0] > BARELY:
        # Only when the script's lr hardly moves the loss: an lr that gets half-way in 50 steps
        # (Adam's default 1e-3 on a fresh model) is not "the cause" because 10x gets further.
        verdict, better = "too_low", higher[0]
    elif user is not None and overfit.get("verdict") == "failed":
        verdict = "not_the_lr"
    facts = {
        "ratios": {f"lr x{s:g}": round(r, 4) for s, r in sorted(ratios.items())},
        "blew_up": [f"lr x{s:g}" for s in sorted(blew)],
        "fits": [f"lr x{s:g}" for s in sorted(fits)],
        "better_lr_scale": better,
        "floor": floor,
        "k": OVERFIT_STEPS,
        "lr": (overfit.get("facts") or {}).get("lr"),
        "optimizer": (overfit.get("facts") or {}).get("optimizer"),
        "overfit_verdict": overfit.get("verdict"),
    }
    every = {
        **{k: list(v) for k, v in (overfit.get("curves") or {}).items()},
        **curves,
    }
    ordered = dict(sorted(every.items(), key=lambda kv: _scale_of(kv[0]) or 0.0))
    return {"verdict": verdict, "steps": steps, "curves": ordered, "facts": facts}


def _best_scale(overfit: dict[str, Any]) -> float:
    """Where nothing fit, the lr scale that went furthest without blowing up (x1 on a tie): the
    baseline compares real and zeroed inputs where training moves the loss most. At x1 alone,
    a warmup's near-zero first lr (nanoGPT) moves neither, and zeros would look as good."""
    ratios = (overfit.get("facts") or {}).get("ratios") or {}
    curves = overfit.get("curves") or {}
    best, scale = math.inf, 1.0
    for label, values in curves.items():
        s = _scale_of(label)
        r = ratios.get(label)
        if s is None or not isinstance(r, int | float):
            continue
        curve = Curve(losses=list(values), seconds=0.0)
        if not _blew_up(curve) and (r < best or (r == best and s == 1.0)):
            best, scale = r, s
    return scale


def _input_independent(setup: Setup, overfit: dict[str, Any] | None) -> dict[str, Any]:
    b = setup.batch
    assert b is not None
    zargs, zkwargs = zeroed(b.args, b.kwargs, b.labels)
    changed = sum(a is not z for a, z in zip(b.args, zargs)) + sum(
        zkwargs[key] is not v for key, v in b.kwargs.items()
    )
    if not changed:
        # A batch passed as a dict or an object: nothing was zeroed, so an unchanged output
        # would say nothing about the model (and TD702 would read it as decisive).
        return {
            "verdict": "not_measured",
            "reason": "no tensor among the model's top-level inputs to zero (a dict or an "
            "object holds the batch)",
        }
    # The output's dependence on the input, at init: exactly none when the forward ignores it.
    model = fresh_copy(setup)
    replay = Replay(b)
    with torch.no_grad():
        real = replay.output(model, b.args, b.kwargs).detach()
        zero = replay.output(model, zargs, zkwargs).detach()
    diff = float((real.double() - zero.double()).abs().max()) if real.numel() else 0.0
    scale = float(real.double().abs().max()) if real.numel() else 0.0
    facts: dict[str, Any] = {
        "output_change": round(diff, 8),
        "output_scale": round(scale, 8),
    }
    if setup.optimizer_class is None:
        ignores = diff <= 1e-7 * max(scale, 1.0)
        return {"verdict": "ignores_input" if ignores else "ok", "facts": facts}
    # The same short training with real and with zeroed inputs (the real run: the overfit
    # run at the user's lr, measured already).
    scale_lr = 1.0
    real_curve = None
    if overfit and overfit.get("curves"):
        fit = (overfit.get("facts") or {}).get("fit_at_lr_scale")
        scale_lr = fit if fit is not None else _best_scale(overfit)
        label = f"lr x{scale_lr:g}"
        values = overfit["curves"].get(label)
        if values:
            real_curve = Curve(losses=list(values), seconds=0.0)
    steps = 0
    if real_curve is None:
        real_curve = train_copy(setup, INPUT_STEPS, lr_scale=scale_lr)
        steps += INPUT_STEPS
    zero_curve = train_copy(setup, len(real_curve.losses) - 1, lr_scale=scale_lr, zero_inputs=True)
    steps += len(zero_curve.losses) - 1
    real_end, zero_end = real_curve.losses[-1], zero_curve.losses[-1]
    facts.update(real_loss=round(real_end, ROUND), zeroed_loss=round(zero_end, ROUND))
    facts["lr_scale"] = scale_lr
    fitted = bool(overfit) and overfit.get("verdict") == "ok"
    if diff <= 1e-7 * max(scale, 1.0):
        verdict = "ignores_input"
    elif math.isfinite(zero_end) and math.isfinite(real_end) and zero_end <= real_end * 1.05:
        # When one batch cannot be fit at all (TD702), the real inputs cannot do better than a
        # constant either: that says nothing about the input.
        verdict = "no_better_than_zeros" if fitted else "inconclusive"
    else:
        verdict = "ok"
    return {
        "verdict": verdict,
        "steps": steps,
        "curves": {
            "real inputs": [round(v, ROUND) for v in real_curve.losses],
            "zeroed inputs": [round(v, ROUND) for v in zero_curve.losses],
        },
        "facts": facts,
    }


_BATCH_NORMS = (torch.nn.modules.batchnorm._BatchNorm,)
_DROPOUTS = (torch.nn.modules.dropout._DropoutNd,)


def _batch_independence(setup: Setup) -> dict[str, Any]:
    b = setup.batch
    assert b is not None
    model = fresh_copy(setup)
    for m in model.modules():
        if isinstance(m, _BATCH_NORMS + _DROPOUTS):
            m.eval()
    positional = [i for i, a in enumerate(b.args) if isinstance(a, torch.Tensor)]
    if not positional:
        return {"verdict": "not_measured", "reason": "the model's input is not a positional tensor"}
    k = positional[0]
    x = b.args[k]
    if not x.is_floating_point():
        return {
            "verdict": "not_measured",
            "reason": f"the input is {x.dtype} (token ids?): no gradient to take with respect "
            "to it",
        }
    n = int(x.shape[0]) if x.dim() >= 1 else 0
    if n < 2:
        return {"verdict": "not_measured", "reason": "a batch of fewer than 2 examples"}
    x = x.detach().clone().requires_grad_(True)
    args = tuple(x if i == k else a for i, a in enumerate(b.args))
    anomaly = torch.is_anomaly_enabled()
    torch.set_anomaly_enabled(True)  # each node keeps its forward line (node_source)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs = list(iter_tensors(model(*args, **b.kwargs)))
    finally:
        torch.set_anomaly_enabled(anomaly)
    out = outs[b.out_index] if b.out_index < len(outs) else None
    if b.internal:  # the output is the loss: the first output with the batch in dim 0
        out = next((t for t in outs if t.dim() >= 1 and int(t.shape[0]) == n), out)
    if out is None or out.dim() < 1 or not out.requires_grad:
        return {"verdict": "not_measured", "reason": "the output does not depend on the input"}
    if int(out.shape[0]) != n:
        return {
            "verdict": "not_measured",
            "reason": f"the output's dim 0 ({int(out.shape[0])}) is not the batch ({n})",
        }
    i = n // 2
    mixer = _first_mixing_node(out[i].sum(), n, i, x)
    grad = x.grad
    if grad is None:
        return {"verdict": "not_measured", "reason": "no gradient reached the input"}
    rows = grad.detach().double().reshape(n, -1).abs().amax(dim=1)
    own = float(rows[i])
    others = torch.cat([rows[:i], rows[i + 1 :]])
    worst = float(others.max())
    mixed = [j for j in range(n) if j != i and float(rows[j]) > MIX_TOL * max(own, 1e-30)]
    skip = set(b.labels)
    others_in = sum(
        1 for j, a in enumerate(b.args) if isinstance(a, torch.Tensor) and j != k and j not in skip
    ) + sum(1 for key, v in b.kwargs.items() if isinstance(v, torch.Tensor) and key not in skip)
    facts: dict[str, Any] = {
        # Whether the mix can be the model's design (TD704 judges): the output's shape (a
        # (B, B) similarity, a (T, B, ...) sequence-first output), the loss input's, and the
        # model's other tensor inputs (a graph's adjacency or edges, masks).
        "output_shape": [int(d) for d in out.shape],
        "loss_input_shape": [int(d) for d in b.input_size],
        "other_tensor_inputs": others_in,
        "example": i,
        "batch": n,
        "own_grad": own,
        "max_other_grad": worst,
        "examples_mixed_in": len(mixed),
        "first_mixed": mixed[:8],
    }
    if mixer:
        facts.update(mixer)
    verdict = "mixes" if mixed and worst > MIX_TOL * max(own, 1e-30) else "independent"
    if verdict == "mixes":
        # Does it still mix with the whole copy in eval mode? A hand-written batch
        # normalization (ghost batch norm, a custom BatchNorm) mixes in train mode only, by
        # design; None when the eval output is not the same tensor (TD704 stays info then).
        facts["mixes_in_eval"] = _mixes_in_eval(setup, k, n, i, tuple(out.shape))
    return {"verdict": verdict, "facts": facts}


def _mixes_in_eval(setup: Setup, k: int, n: int, i: int, shape: tuple) -> bool | None:
    b = setup.batch
    assert b is not None
    model = fresh_copy(setup).eval()
    x = b.args[k].detach().clone().requires_grad_(True)
    args = tuple(x if j == k else a for j, a in enumerate(b.args))
    outs = list(iter_tensors(model(*args, **b.kwargs)))
    out = outs[b.out_index] if b.out_index < len(outs) else None
    if b.internal:
        out = next((t for t in outs if t.dim() >= 1 and int(t.shape[0]) == n), out)
    if out is None or tuple(out.shape) != shape or not out.requires_grad:
        return None
    (grad,) = torch.autograd.grad(out[i].sum(), x, allow_unused=True)
    if grad is None:
        return None
    rows = grad.detach().double().reshape(n, -1).abs().amax(dim=1)
    own = float(rows[i])
    rows[i] = 0
    return bool(float(rows.max()) > MIX_TOL * max(own, 1e-30))


def _first_mixing_node(
    root: torch.Tensor, n: int, i: int, x: torch.Tensor
) -> dict[str, Any] | None:
    """Backward from output[i] with a hook on every autograd node: the first node (backward
    order) that sends gradient into rows other than i of a tensor whose dim 0 is the batch."""
    found: list[dict[str, Any]] = []
    handles = []
    seen: set[int] = set()
    on_path = _depends_on(root.grad_fn, x)
    stack = [root.grad_fn]
    while stack and len(seen) < 5000:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        # Only the inputs that carry the examples (they depend on x): a weight's gradient has
        # rows that are not examples, whatever its dim 0.
        nexts = [
            f if f is not None and id(f) in on_path else None
            for f, _ in getattr(node, "next_functions", ())
        ]

        def hook(grad_inputs: Any, grad_outputs: Any, node: Any = node, nexts: Any = nexts) -> None:
            if found:
                return
            for g, fn in zip(grad_inputs, nexts):
                if fn is None or not isinstance(g, torch.Tensor) or g.dim() < 1:
                    continue
                if int(g.shape[0]) == n:
                    rows = g.detach().reshape(n, -1).abs().amax(dim=1)
                    own = float(rows[i])
                    rows[i] = 0
                    if float(rows.max()) > MIX_TOL * max(own, 1e-30):
                        found.append({"op": node.name(), "op_source": node_source(node)})
                        return

        if id(node) in on_path:
            handles.append(node.register_hook(hook))
        stack.extend(f for f in nexts if f is not None)
    try:
        root.backward()
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def _depends_on(root: Any, x: torch.Tensor, limit: int = 20000) -> set[int]:
    """ids of the autograd nodes under `root` whose inputs reach the leaf `x` (iterative
    post-order; the graph's other branches, weights and constants, are left out)."""
    memo: dict[int, bool] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack and len(memo) < limit:
        node, expanded = stack.pop()
        if node is None:
            continue
        if not expanded:
            if id(node) in memo:
                continue
            if getattr(node, "variable", None) is x:
                memo[id(node)] = True
                continue
            nexts = [f for f, _ in getattr(node, "next_functions", ()) if f is not None]
            stack.append((node, True))
            stack.extend((f, False) for f in nexts if id(f) not in memo)
        else:
            nexts = [f for f, _ in getattr(node, "next_functions", ()) if f is not None]
            memo[id(node)] = any(memo.get(id(f), False) for f in nexts)
    return {k for k, v in memo.items() if v}

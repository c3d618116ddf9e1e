"""TD108 loss-not-decreasing."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._loss_scan import Levels, LossScan
from .._objective import objective, spearman, too_high_lr, uniform_guess
from .._registry import rule
from .._util import loss_source
from ..numerics.loss_spike_or_divergence import _phases


@rule(
    code="TD108",
    name="loss-not-decreasing",
    severity=Severity.WARNING,
    summary="The training loss has not fallen significantly since the start of the run.",
    requires=(
        "loss.train",
        "loss.backward",
        "params.update",
        "params.norm",
        "grads.norm",
        "optim.lr",
        # what the objective is (rules/_objective.py) and the clipping of a too-high lr
        "loss_inputs.observed",
        "loss_inputs.stats",
        "loss_inputs.labels",
        "schedule.clip_norm",
        "schedule.clip_max",
        "schedule.steps",
    ),
    events=(
        "backward_call",
        "backward_site",
        "log_call",
        "loss_input",
        "lr_scheduler",
        "models_added",
    ),
    facts=("optimizers", "params"),
    priority=60,
    state=lambda: LossScan(width=fifth),
)
def loss_not_decreasing(
    tl: TimelineView, state: LossScan, *, min_steps: int = 50, min_rel_drop: float = 0.05
) -> Iterator[Finding]:
    """
    ## What it detects
    A training loss meant to fall whose median over the last fifth of the run is not at least
    `min_rel_drop` (5%) below its start (the higher of the first fifth's median and the first 3
    steps' median), after at least `min_steps` optimizer steps; and a learning rate far too high
    that does not blow the run up (clipping, Adam's bounded steps): every step moves the weights
    by a large fraction of their initial size while the loss ends no better than its start,
    a uniform guess (ln C) or predicting the class frequencies. Also a loss that fell, when
    every param group's lr was exactly 0 over a stretch of at least 10 consecutive optimizer
    steps and 15% of the run (a warmup sized in batches, stepped once an epoch: a whole epoch
    at lr 0, then a fraction of the lr), with the line of `scheduler.step()`. Also a
    classifier's loss that fell by more than 5% but only as far as the entropy of its labels
    (the loss of predicting the class frequencies) and held there over the last half of the
    run: what it learned is the label prior, nothing of the input (targets misaligned with
    the outputs). A loss falling steadily by less than 5% is slow, not stuck (an LSTM at its
    unigram plateau), unless it ends no lower than a uniform guess (ln C): then it only fell
    from its init towards chance; the cause names the weights' shrink and the weight_decay
    when measured. Regression targets 100 times the model's outputs (and of rms 100 or more)
    are named as the cause.

    Only a loss measured to be meant to fall is judged at warning: a standard loss (cross-entropy,
    MSE, ...) on the model's output against targets whose mix and range stay put. Not judged:
    several optimizers stepping separate models with their own backward() lines (a GAN, actor
    and critic), targets that trend over the run (RL returns, TD targets, assigned boxes), each
    sample its own class (InfoNCE), a loss written by hand or with terms the standard losses do
    not account for (info at most). A measured fault (nothing moves, steps far too small, or
    far too large as above) is a warning whatever the objective. The evidence says what was
    judged (`objective`, `judged`).

    ## Why it matters
    A run that trains from scratch drops its loss quickly at first. A flat loss means the run
    is burning compute without learning; the cause decides the fix, so traindoctor measures it.

    ## How it is measured
    Per-step mean losses (from `doc.log(loss=...)` or the backward root) are compared between
    the start and the last fifth of the run (medians, robust to spikes). For the cause, sampled
    steps measure the relative update size ||Δθ|| / ||θ|| per parameter: far below 1e-6 means
    the learning rate is too small, unless the optimizer divides its step by √v + eps (the Adam
    family, RMSprop, Adagrad) and the median gradient per element (||g|| / √numel over the
    params and sampled steps) is below eps: then the step is about lr·g/eps and the cause named
    is the vanished gradient; zero means nothing moves (TD104/TD105). A far too high lr:
    ||Δθ_t|| / ||θ_0|| (against the initial weights, which a blown-up run no longer has) at
    least 1 in median over the params and sampled steps (healthy runs measured 0.002 to 0.19),
    and the loss of the last fifth within 5% of, or above, the lowest of its first value, ln C
    and the entropy of the labels seen; how often `clip_grad_norm_` cut the gradient is given
    with it. What the objective is comes from `rules/_objective.py` (the loss-input, optimizer
    and backward-site records).

    ## Example
    ```python
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-7)   # updates are 1e-8 of the weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)  # 1000x: clipped, never learns
    ```

    ## Fix
    ```python
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)   # relative updates near 1e-3
    ```

    ## Known false positives
    Fine-tuning from a converged checkpoint may legitimately move the loss by less than 5% in
    the first `min_steps` steps; lower `min_rel_drop` for such runs. A supervised dataset read
    in an order sorted by target is judged as moving targets (not judged: a miss, not an alarm).
    """
    state.read(tl)
    with state.current() as levels:
        return list(_judge(tl, state, levels, min_steps=min_steps, min_rel_drop=min_rel_drop))


def _judge(
    tl: TimelineView, state: LossScan, levels: Levels, *, min_steps: int, min_rel_drop: float
) -> Iterator[Finding]:
    measured = state.steps_measured()
    if measured < min_steps:
        return
    if state.nonfinite_within(max(5, measured // 5)):
        return  # a loss that ends NaN/Inf is TD201/TD202/TD203's, with the op that made it
    values, steps = levels.values, levels.steps
    if len(values) < min_steps:
        return
    if levels.few_values():
        return  # bit-constant: TD107 reports it with its cause
    w = max(5, len(values) // 5)
    later = [p for p in _phases(tl) if steps[0] < p <= steps[-1]]
    if later:
        # A later phase (a second task's backward() line, a student after its teacher) starts
        # at its own loss: only the last phase's losses are one objective's to compare.
        cut = next(i for i, s in enumerate(steps) if s >= max(later))
        values, steps = list(values[cut:]), list(steps[cut:])
        if len(values) < min_steps or len(set(values)) <= 2:
            return
        w = max(5, len(values) // 5)
        first = max(statistics.median(values[:w]), statistics.median(values[:3]))
        last = statistics.median(values[-w:])
    else:
        # The start is the higher of the first fifth and the first 3 steps: a loss that fell
        # within the first few steps and then held its level has fallen.
        first = max(levels.head_median(w), statistics.median(values[:3]))
        last = levels.tail_median(w)
    drop = (first - last) / abs(first) if first else 0.0
    if first == 0.0 and last == 0.0:
        yield _at_zero(tl, steps, len(values))
        return
    data = state.objective.inputs(tl)
    obj = objective(tl, data)
    hot = too_high_lr(tl, values, data=data) if obj.falls else None
    stretch = None
    prior = _label_entropy(data.totals)
    at_prior = bool(obj.falls) and _held_at_prior(values, first, last, prior)
    if drop >= min_rel_drop and hot is None:
        # A loss that fell can still have lost whole epochs at lr exactly 0 (a warmup sized
        # in batches, stepped once an epoch in a plain loop: the later epochs train at a
        # fraction of the lr and the loss still falls some), or fallen only to the labels'
        # entropy (at_prior); the lr stretch, when there is one, is the measured cause.
        stretch = _zero_lr_stretch(tl)
        if stretch is None and not at_prior:
            return
    ratio = _median_update_ratio(tl)
    cause, fix, fault = _cause(tl, ratio, drop, hot, stretch)
    normal = cause.startswith("the weights move at a normal rate")
    chance = uniform_guess(tl, data) if obj.falls else None
    at_chance = chance is not None and last >= chance * (1 - 0.002)
    # Above the labels' entropy, at ln C: a uniform guess, not the class frequencies (with
    # balanced labels the two are one value, and the labels' cause is kept).
    uniform = at_chance and prior is not None and chance > prior * 1.01
    chance_cause = labels_cause = shrank = False
    under = (
        _grads_under_eps(tl)
        if normal and prior and last > 0 and abs(last - prior) <= 0.03 * prior
        else None
    )
    if under is not None:
        # At the class frequencies with most gradients below the optimizer's eps (a deep ReLU
        # stack at PyTorch's default init): the signal does not get through, whatever the
        # labels are.
        cause, fix = _under_eps_cause(
            f"the loss stays at {last:.4g}, the entropy of the labels seen ({prior:.4g}: the "
            "output does not depend on the input), and",
            under,
        )
    elif normal and prior and last > 0 and abs(last - prior) <= 0.03 * prior and not uniform:
        # At the loss of predicting the class frequencies: nothing the model outputs
        # depends on its input, which is what labels that do not belong to their inputs
        # (shuffled apart, read in another order) leave to learn.
        labels_cause = True
        cause = (
            f"the weights move at a normal rate (median ||Δθ||/||θ|| = {ratio:.2g}) but the "
            f"loss stays at {last:.4g}, the entropy of the labels seen ({prior:.4g}): the "
            "loss of predicting the class frequencies whatever the input. The labels likely "
            "do not belong to their inputs (X and y shuffled separately, a Dataset that "
            "reads its labels in another order than its inputs) or the inputs carry no "
            "information about them"
        )
        fix = (
            "print a few (input, label) pairs the loop actually trains on; shuffle inputs "
            "and labels with one permutation (X[perm], y[perm]) and index both with the "
            "same key in __getitem__"
        )
    elif normal and (scale := _target_scale(tl)) is not None:
        t_rms, t_mean, out_max, site = scale
        cause = (
            f"the weights move at a normal rate (median ||Δθ||/||θ|| = {ratio:.2g}) but the "
            f"targets of `{site['fn']}` at {site.get('source')} have a scale (rms {t_rms:.3g}, "
            f"mean {t_mean:.3g}) {t_rms / max(out_max, 1e-12):.3g} times the model's outputs "
            f"(|output| up to {out_max:.3g} at the last measured step, after {len(values)} "
            "steps): the loss is that gap, which steps sized for weights of order 1 close "
            "slowly"
        )
        fix = (
            "standardize the targets ((y - mean) / std over the training set, undone at "
            "prediction), or scale the output layer to them; keep the loss of order 1"
        )
    elif at_chance and normal:
        chance_cause = True
        cause, shrank = _at_chance_cause(tl, ratio, last, chance)
        fix = (
            "make the model's output depend on its input: check the regularisation "
            "(weight_decay of the order of 1e-4 to 1e-1; decoupled AdamW for large values), "
            "that the inputs reach the model, and that it can overfit one batch"
        )
    if not fault and not at_chance and not at_prior and (spearman(values) or 0.0) <= -0.5:
        # Falling steadily, by less than `min_rel_drop`: slow (an LSTM at its unigram plateau),
        # not stuck. On 50+ steps a flat noisy loss has |rank correlation| < 0.5 (about 3.5
        # standard deviations); a stuck loss with a measured fault is still reported. A loss
        # that ends at the uniform guess (ln C) only fell from its init towards chance: the
        # model learned nothing of its input, not slowly.
        return
    if not (fault or obj.falls) and ratio is not None:
        cause = f"the loss did not fall while the weights moved (median ||Δθ||/||θ|| = {ratio:.2g})"
        fix = "nothing to fix if this loss is not meant to fall; otherwise see the docs"
    if chance_cause and not fault and not shrank:
        # At a uniform guess with no measured fault: a model still on its initial plateau
        # (a ViT in a short run) looks the same as one that cannot learn; said, not judged.
        severity = Severity.INFO
    elif at_prior and drop >= min_rel_drop and not fault:
        # A loss that fell to the labels' entropy and held there: targets apart from their
        # outputs, or a model still on its class-frequency plateau (a short char-LM run sits
        # there for hundreds of steps, then falls below). The loss alone cannot tell them
        # apart, so it is said, not judged.
        severity = Severity.INFO
        cause += (
            "; a model still on its class-frequency plateau looks the same, as long as the "
            "run is short: train longer on a few batches to tell"
        )
    elif fault or obj.falls:
        severity = Severity.WARNING
    elif obj.falls is None:
        severity = Severity.INFO
    else:
        return  # a loss that is not meant to fall, moved at a normal rate: nothing to say
    src = loss_source(tl)
    if stretch is not None or "learning rate is exactly 0" in cause:
        # The schedule is the cause: the line of its first scheduler.step().
        scheds = [e.get("source") for e in tl.events("lr_scheduler") if e.get("source")]
        src = scheds[0] if scheds else src
    opts = tl.fact("optimizers") or []
    lr_cause = hot is not None or (ratio is not None and 0 < ratio < 1e-6)
    if lr_cause and UNDER_EPS not in cause and opts:
        # The learning rate is the cause: the line that built the optimizer (zero-code mode
        # sees the constructor) says where it is set.
        src = opts[0].get("created_at") or src
    evidence = {
        "first_median": first,
        "last_median": last,
        "relative_change": -drop,
        "steps": len(values),
        "median_update_ratio": ratio,
        "objective": obj.kind,
        "judged": obj.judged,
    }
    if hot is not None:
        evidence["lr_too_high"] = hot
    title = (
        f"the training loss went from {first:.4g} to {last:.4g} ({-drop:+.1%}) over "
        f"{len(values)} steps"
    )
    if at_prior and labels_cause:
        title = (
            f"the training loss fell only to the entropy of the labels ({prior:.4g}), the loss "
            f"of predicting the class frequencies, and stayed there: {first:.4g} -> {last:.4g} "
            f"over {len(values)} steps"
        )
    if chance_cause:
        title = (
            f"the training loss ends at {last:.4g} after {len(values)} steps, no lower than a "
            f"uniform guess over the classes ({chance:.4g})"
        )
    if stretch is not None:
        title = (
            f"the learning rate was exactly 0 at {stretch[0]} of the {stretch[1]} optimizer "
            f"steps; the training loss went from {first:.4g} to {last:.4g} ({-drop:+.1%})"
        )
        evidence["zero_lr_steps"] = {
            "count": stretch[0],
            "of": stretch[1],
            "first": stretch[2],
            "last": stretch[3],
            "lr_after": stretch[4],
        }
    if hot is not None:
        title = (
            f"the training loss ends at {hot['last']:.4g}, {hot['reference_text']}, while each "
            f"step moves the weights by {hot['update_to_initial']:.2g}x their initial norm"
        )
    yield tl.finding(
        title=title,
        step=steps[0],
        evidence=evidence,
        where=Where(source=src),
        cause=f"{cause}; judged: {obj.judged}"
        if severity is Severity.WARNING
        else f"{cause}; not judged a fault: {obj.judged}",
        fix=fix,
        severity=severity,
        confidence=0.7 if severity is Severity.WARNING else 0.4,
    )


def _at_zero(tl: TimelineView, steps: list[int], n: int) -> Finding:
    """A loss whose median is exactly 0 at the start and at the end: at its floor, with nothing
    to reduce. A hinge or margin loss already met (a triplet loss on separated classes) and a
    loss zeroed by mistake (times 0, an empty mask) both read so: said, not judged."""
    return tl.finding(
        title=f"the training loss is exactly 0 at most of its {n} steps, from the start",
        step=steps[0],
        severity=Severity.INFO,
        evidence={"first_median": 0.0, "last_median": 0.0, "steps": n},
        where=Where(source=loss_source(tl)),
        cause="the median loss of the first and of the last fifth of the run is exactly 0: the "
        "loss sits at its floor and gives no gradient. A hinge or margin loss that the model "
        "already meets (a triplet or contrastive margin smaller than the distances at init) "
        "does this by design; a loss zeroed by mistake (multiplied by 0, a mask that selects "
        "nothing) looks the same, so it is not judged",
        fix="if the margin is meant to be met already, nothing; otherwise check that the loss "
        "selects the elements it should and that its margin is on the scale of the distances",
        confidence=0.4,
    )


def _at_chance_cause(
    tl: TimelineView, ratio: float | None, last: float, chance: float
) -> tuple[str, bool]:
    """The cause of a loss that ends at the uniform guess while the weights move, and whether
    the weights measurably shrank (to under half their first sampled norm: a fault), named
    with the weight decay set."""
    moving = f" (median ||Δθ||/||θ|| = {ratio:.2g})" if ratio is not None else ""
    out = (
        f"the weights move at a normal rate{moving} but the loss ends at {last:.4g}, no lower "
        f"than a uniform guess over the classes ({chance:.4g}): the model's output does not "
        "depend on its input"
    )
    norms = tl.series("params.norm")
    if len(norms) >= 2:
        first, end = norms[0][1], norms[-1][1]
        shared = [n for n in first if first[n] and n in end]
        before = math.sqrt(sum(first[n] ** 2 for n in shared))
        after = math.sqrt(sum(end[n] ** 2 for n in shared))
        if shared and before > 0 and after < 0.5 * before:
            decays = [
                g.get("weight_decay")
                for o in tl.fact("optimizers") or []
                for g in (o.get("groups") or [])
                if isinstance(g, dict) and g.get("weight_decay")
            ]
            out += (
                f"; the weights shrank to {after / before:.2g}x their norm at step "
                f"{norms[0][0]} (step {norms[-1][0]})"
            )
            if decays:
                out += f" under weight_decay={max(decays):g}, which outweighs the gradient"
            return out, True
    return out, False


def _held_at_prior(values: list[float], first: float, last: float, prior: float | None) -> bool:
    """The loss fell only as far as the entropy of the labels (predicting the class
    frequencies) and held there: the last fifth within 2% of it, the fall from the start at
    least 5% and all of it down to that level (the start at least 5% above it), and the last
    half flat (no steady fall: |rank correlation| under 0.3). What is left is the input's
    information, which the model does not use."""
    if not prior or prior <= 0 or len(values) < 50:
        return False
    if abs(last - prior) > 0.02 * prior or first < prior * 1.05:
        return False
    return (spearman(values[len(values) // 2 :]) or 0.0) > -0.3


REGRESSION_FNS = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")


def _target_scale(tl: TimelineView, ratio: float = 100.0, floor: float = 100.0):
    """(targets' rms, mean, the outputs' largest |value|, the site) at the last step that
    measured a regression loss site, when its targets' rms is at least `floor` and `ratio`
    times the outputs' largest magnitude: targets the model's outputs never approach."""
    sites = {e.get("site"): e for e in tl.events("loss_input") if e.get("fn") in REGRESSION_FNS}
    if not sites:
        return None
    for _, stats in reversed(tl.series("loss_inputs.stats")):
        for site, event in sites.items():
            ms, mean = stats.get(f"{site}.t_ms"), stats.get(f"{site}.t_mean")
            lo, hi = stats.get(f"{site}.in_min"), stats.get(f"{site}.in_max")
            if None in (ms, mean, lo, hi) or not ms > 0:
                continue
            rms, out = math.sqrt(ms), max(abs(lo), abs(hi))
            if rms >= floor and rms >= ratio * out:
                return rms, mean, out, event
            return None
    return None


def _label_entropy(totals: dict[str, float]) -> float | None:
    """Entropy (nats) of the class-index targets seen on the observed steps (at least 100)."""
    n = sum(totals.values())
    if n < 100:
        return None
    return -sum(v / n * math.log(v / n) for v in totals.values() if v > 0)


def fifth(n: int) -> int:
    """TD108's windows: a fifth of the run, at least 5 steps."""
    return max(5, n // 5)


def _median_update_ratio(tl: TimelineView) -> float | None:
    norms = dict(tl.series("params.norm"))
    ratios = []
    for step, upd in tl.series("params.update"):
        pn = norms.get(step, {})
        for name, d in upd.items():
            if pn.get(name):
                ratios.append(d / pn[name])
    return statistics.median(ratios) if ratios else None


UNDER_EPS = "The learning rate is not what holds them back"
# Optimizers whose step divides by sqrt(a running mean of squared gradients) + eps: a gradient
# far below eps gets a step of about lr * g / eps, whatever the lr.
_EPS_DIVIDED = ("adam", "rmsprop", "adagrad")


def _grads_under_eps(tl: TimelineView) -> tuple[float, float, str] | None:
    """(median per-element gradient rms over the params and sampled steps, the largest eps,
    the optimizer's class) when every optimizer divides its step by sqrt(v) + eps (the Adam
    family, RMSprop, Adagrad) and that median is below the eps of every group."""
    opts = tl.fact("optimizers") or []
    groups = [g for o in opts for g in o.get("groups") or []]
    eps = [g.get("eps") for g in groups]
    if not opts or not all(isinstance(e, int | float) and e > 0 for e in eps):
        return None
    if not all(any(k in str(o.get("class", "")).lower() for k in _EPS_DIVIDED) for o in opts):
        return None
    numel = {n: (info or {}).get("numel") for n, info in (tl.fact("params") or {}).items()}
    rms = [
        g / math.sqrt(numel[n])
        for _, norms in tl.series("grads.norm")
        for n, g in (norms or {}).items()
        if isinstance(g, int | float) and math.isfinite(g) and g > 0 and numel.get(n)
    ]
    if not rms or (median := statistics.median(rms)) >= min(eps):
        return None
    return median, max(eps), str(opts[0].get("class"))


def _under_eps_cause(lead: str, under: tuple[float, float, str]) -> tuple[str, str]:
    """(cause, fix) for gradients below the optimizer's eps, after `lead` (what was seen)."""
    rms, eps, cls = under
    return (
        f"{lead} the gradients are vanishingly small: their median size per element (over the "
        f"params and sampled steps) is {rms:.2g}, below {cls}'s eps={eps:g}, where its step "
        f"lr·m/(√v + eps) shrinks to about lr·g/eps. {UNDER_EPS}: almost no gradient reaches "
        "most params from the loss",
        "restore the gradient rather than the learning rate (where it vanishes: `traindoctor "
        "explain TD207`): an init matched to the activation (kaiming_normal_ for ReLU), "
        "normalization or residual connections; a larger lr or a smaller eps only rescales "
        "gradients this small",
    )


def _top_lrs(tl: TimelineView) -> Iterator[tuple[int, float]]:
    """(step, the largest lr of its param groups) for each step that recorded an lr."""
    for step, groups in tl.series("optim.lr"):
        lrs = [v for v in (groups or {}).values() if isinstance(v, int | float)]
        if lrs:
            yield step, max(lrs)


def _zero_lr_steps(tl: TimelineView) -> tuple[int, int, int, int, float | None] | None:
    """(steps at which every param group's lr is 0, steps with an lr, first and last such
    step, the largest lr after the last) when the lr is 0 at a quarter of the steps or more."""
    zeros, n, after = [], 0, None
    for step, top in _top_lrs(tl):
        n += 1
        if top == 0:
            zeros.append(step)
            after = None
        else:
            after = top if after is None else max(after, top)
    if not zeros or len(zeros) < n / 4:
        return None
    return len(zeros), n, zeros[0], zeros[-1], after


def _zero_lr_stretch(
    tl: TimelineView, min_len: int = 10, min_share: float = 0.15
) -> tuple[int, int, int, int, float | None] | None:
    """As _zero_lr_steps, for a run whose loss fell: the longest stretch of consecutive
    optimizer steps at which every param group's lr is exactly 0, when it is at least
    `min_len` steps and `min_share` of the steps with an lr, and some step has a positive lr.
    A warmup that starts at 0 has one such step, a decay to 0 its last one or two: a stretch
    of ten or more is a schedule stepped less often than the optimizer."""
    n, run, best, after, peak = 0, [], [], None, 0.0
    for step, top in _top_lrs(tl):
        n += 1
        if top == 0:
            run.append(step)
            if len(run) > len(best):
                best, after = list(run), None
            continue
        run = []
        peak = max(peak, top)
        if best and best[-1] < step:
            after = top if after is None else max(after, top)
    if peak <= 0 or len(best) < min_len or len(best) < min_share * n:
        return None
    if after is not None and after >= _base_lr(tl) * (1 - 1e-6):
        # After the stretch the lr reached the schedule's own base lr: a warmup sized in
        # epochs that starts at 0 (LambdaLR(lambda e: e / warmup), stepped once an epoch as
        # sized) lost its first epoch, and the loss fell: not a schedule stepped too rarely.
        return None
    return len(best), n, best[0], best[-1], after


def _base_lr(tl: TimelineView) -> float:
    """The largest `initial_lr` (a scheduler's base lr) of the optimizers' groups at attach;
    inf where no scheduler had set one (then nothing is taken for a completed warmup)."""
    lrs = [
        g.get("initial_lr")
        for o in tl.fact("optimizers") or []
        for g in (o.get("groups") or [])
        if isinstance(g, dict)
    ]
    lrs = [v for v in lrs if isinstance(v, int | float) and v > 0]
    return max(lrs) if lrs else math.inf


def _cause(
    tl: TimelineView,
    ratio: float | None,
    drop: float,
    hot: dict | None,
    stretch: tuple[int, int, int, int, float | None] | None = None,
) -> tuple[str, str, bool]:
    """(cause, fix, fault): fault is True when the measured cause is a fault in itself,
    whatever the objective (nothing moves, or steps far too small or too large)."""
    lrs = [v for _, d in tl.series("optim.lr") for v in d.values() if v is not None]
    lr = f" (lr={lrs[-1]:g})" if lrs else ""
    peak = f" (lr up to {max(lrs):g})" if lrs else ""
    if hot is not None:
        clip = (
            f"; clip_grad_norm_(max_norm={hot['max_norm']:g}) cut the gradient on "
            f"{hot['clipped_steps']} of {hot['clip_steps']} steps (median norm "
            f"{hot['median_grad_norm']:.3g}), which keeps it finite"
            if "max_norm" in hot
            else ""
        )
        return (
            f"the learning rate is far too high{peak}: each step moves the weights by "
            f"{hot['update_to_initial']:.2g} times their initial norm (||Δθ||/||θ_0||, median; "
            f"a healthy step moves them by about 1e-3), and the loss ends at {hot['last']:.4g}, "
            f"{hot['reference_text']}{clip}: no NaN, but nothing learned",
            "lower the learning rate (by 10x steps) until ||Δθ||/||θ|| is about 1e-3 per step; "
            "keep gradient clipping as a guard, not as the fix",
            True,
        )
    if ratio is None:
        return (
            "no parameter update was measured",
            "check that optimizer.step() runs and the params are in the optimizer",
            False,
        )
    if ratio == 0 or stretch is not None:
        zero = stretch or _zero_lr_steps(tl)
        if zero:
            n_zero, n, first, last, after = zero
            rest = f"; at most {after:g} after it" if after is not None else ""
            stepped = sum(1 for _, d in tl.series("schedule.steps") if d)
            calls = (
                f"; scheduler.step() ran at {stepped} of the {n} optimizer steps"
                if 0 < stepped < n
                else ""
            )
            return (
                f"the learning rate is exactly 0 at {n_zero} of the {n} optimizer steps (the "
                f"first at step {first}, the last at step {last}{rest}){calls}: those steps "
                "change nothing",
                "check the lr schedule: a warmup sized in optimizer steps but stepped once an "
                "epoch (scheduler.step() in the epoch loop, Lightning's default "
                "interval='epoch') holds the lr at 0 for a whole epoch; step it per batch "
                "(Lightning: interval='step')",
                True,
            )
        moved = any(d > 0 for _, upd in tl.series("params.update") for d in upd.values())
        return (
            "the parameters do not change at "
            + ("most of the sampled steps" if moved else "all")
            + " (see TD104/TD105)",
            "fix what stops the update first",
            True,
        )
    if ratio < 1e-6 and (under := _grads_under_eps(tl)) is not None:
        return (*_under_eps_cause(f"updates are tiny ({ratio:.2g}{lr}) because", under), True)
    if ratio < 1e-6:
        return (
            f"updates are tiny: the median ||Δθ||/||θ|| per step is {ratio:.2g}{lr}, so the "
            "learning rate is far too small to move the weights in this many steps",
            "raise the learning rate until ||Δθ||/||θ|| is around 1e-4 to 1e-2 per step",
            True,
        )
    if ratio > 1e-1:
        return (
            f"updates are huge: the median ||Δθ||/||θ|| per step is {ratio:.2g}{lr}; the weights "
            "jump around instead of descending",
            "lower the learning rate (or clip gradients) until ||Δθ||/||θ|| is about 1e-3",
            False,
        )
    return (
        f"the weights move at a normal rate (median ||Δθ||/||θ|| = {ratio:.2g}{lr}) but the loss "
        "does not fall: the targets may not match the inputs (shuffled or misaligned labels), the "
        "loss may not be the quantity the model can reduce, or the model is too small",
        "check input/target alignment on a few samples, and that the model can overfit one batch",
        False,
    )

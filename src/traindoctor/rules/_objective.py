"""Which training losses are expected to fall, judged from measured structure (not from names).

TD108 (loss-not-decreasing) and TD210 (loss-spike-or-divergence) compare a loss with its own
start. That is a fault only for an objective that is meant to fall: a supervised loss against
targets from a fixed set. Many healthy programs train objectives that are not: models trained
against each other (a GAN's generator and discriminator), targets the run itself produces and
moves (RL returns and TD targets, an assigner's matches), instance-discrimination losses whose
classes are the batch's own embeddings (InfoNCE), losses written by hand that traindoctor cannot
read. `objective(tl)` says which of these a run is, from what the probes recorded:

- the optimizers: two or more stepping disjoint sets of params, with two or more backward call
  sites, are separate models with their own losses;
- the standard loss calls (`loss_input` events, `loss_inputs.*`): the kind of target, whether
  the label mix or the target range moves over the run (halves compared, measured against the
  spread within a batch), whether each sample is its own class;
- how much of the backward root the standard losses account for.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from ..timeline import TimelineView
from ._objective_inputs import Inputs, ObjectiveScan, Targets, move_of

CLASS_FNS = ("cross_entropy", "nll_loss")
# Observed steps of a site's targets needed to call them stationary or moving: batches of one
# target (no range within a batch to compare with) need more.
MIN_OBSERVED = 6
MIN_OBSERVED_WIDE = 4
# ||Δθ_t|| / ||θ_0|| (median over params and sampled steps) at which a step is far too large.
# Measured: healthy runs 0.002 to 0.06, and 0.19 for layer-wise Adam at lr=0.03 on small layers
# (mnist-forward-forward, whose first steps reach 1.1); far too high lrs 2.7 (scenario
# lr_too_high_clipped), 5.3 (nanoGPT lr x1000), 5.7 (char-level GRU at Adam lr=3).
MIN_UPDATE = 1.0


@dataclass(frozen=True)
class Objective:
    """`falls`: True when the loss is expected to fall (a fault if it does not), False when it
    is not meant to, None when traindoctor cannot tell. `judged` says why, for the evidence."""

    falls: bool | None
    kind: str
    judged: str


def objective(tl: TimelineView, data: Inputs | None = None) -> Objective:
    """What the run's loss is. `data`: its parsed inputs, from the ObjectiveScan an
    incremental rule keeps (a fresh pass parses the whole timeline)."""
    data = data if data is not None else ObjectiveScan().inputs(tl)
    several = _several_models(tl, data.stepped)
    if several is not None:
        return several
    sites = _training_sites(tl, data)
    if not sites:
        return Objective(
            None,
            "hand-written",
            "no standard loss function (cross_entropy, mse_loss, ...) was seen taking the "
            "model's output as its input (a loss written by hand, or the prediction passed as "
            "the target), so traindoctor cannot tell whether it is meant to fall",
        )
    stats, labels = data.stats, data.labels
    kinds = []
    for site, event in sorted(sites.items()):
        fn = event.get("fn")
        if fn in CLASS_FNS and not event.get("target_float"):
            own = _own_class(event, data.targets.get(site) or Targets())
            if own:
                return Objective(None, "contrastive", f"{fn} at {_src(event)}: {own}")
            moved = _labels_moved(labels.get(site, []))
            if moved:
                return Objective(False, "moving-targets", f"{fn} at {_src(event)}: {moved}")
            kinds.append(f"{fn} ({event.get('classes')} classes)")
        else:
            moved = _targets_moved(stats.get(site, []))
            if moved is None:
                return Objective(
                    None,
                    "unobserved-targets",
                    f"{fn} at {_src(event)}: its targets were observed on too few steps to tell "
                    "whether they stay put",
                )
            if moved:
                return Objective(False, "moving-targets", f"{fn} at {_src(event)}: {moved}")
            kinds.append(f"{fn}")
    share, summed = _standard_share(sites, data)
    if share is not None and not _whole(share):
        return Objective(
            None,
            "mixed",
            f"the standard losses seen ({', '.join(sorted(set(kinds)))}) make up "
            f"{share:.0%} of the loss backward() runs on: the rest is written by hand "
            "(a KL or regularization term, a policy term), whose course traindoctor cannot read",
        )
    return Objective(
        True,
        "supervised",
        f"supervised {', '.join(sorted(set(kinds)))} against targets whose mix and range stay "
        "the same over the run (a fixed dataset)"
        + (
            "; the loss logged adds up each step's backward passes (gradient accumulation): "
            f"the standard losses make up {summed[0]:.0%} of it per pass and {summed[1]:.0%} "
            "of the loss backward() runs on"
            if summed is not None
            else ""
        ),
    )


def _src(event: dict[str, Any]) -> str:
    return event.get("source") or f"site {event.get('site')}"


def _several_models(tl: TimelineView, stepped: set[str]) -> Objective | None:
    """Two or more optimizers stepping disjoint params, and two or more backward() lines."""
    opts = [{n for g in o["groups"] for n in g["params"] if n} for o in tl.fact("optimizers") or []]
    opts = [o for o in opts if o]
    if len(opts) < 2:
        return None
    active = [o for o in opts if o & stepped] if stepped else opts
    if len(active) < 2 or any(a & b for i, a in enumerate(active) for b in active[i + 1 :]):
        return None
    sources = {e.get("source") for e in tl.events("backward_site")}
    if len(sources) < 2:
        return None  # one loss split over several optimizers (per-group optimizers)
    return Objective(
        False,
        "several-models",
        f"{len(active)} optimizers step separate models, each with its own loss "
        f"({len(sources)} backward() lines): models trained against each other or on each "
        "other's outputs (a GAN, actor and critic), whose losses are not meant to fall together",
    )


def _training_sites(tl: TimelineView, data: Inputs) -> dict[int, dict[str, Any]]:
    return {
        e["site"]: e
        for e in tl.events("loss_input")
        if e.get("site") in data.observed or not data.any_observed
    }


def _own_class(event: dict[str, Any], targets: Targets) -> str | None:
    """Instance discrimination: every sample of the batch is its own class (targets are the
    row indices, the logits a batch-by-batch similarity), or every target is one column
    (the positive placed first, as in MoCo)."""
    classes = event.get("classes")
    shape = event.get("input_shape") or []
    if not classes or classes < 2 or len(shape) != 2:
        return None
    t = targets  # counts and distinct values of the site's t_min/t_max and label histograms
    if t.n_mins >= 2 and t.mins == {0.0} and t.maxs == {0.0}:
        return (
            f"every target is class 0 of {classes} on every observed step: the logits are "
            "scores against the model's own embeddings with the positive first (a contrastive "
            "loss), which moves as the model trains"
        )
    if shape[0] != classes:
        return None
    # every histogram has every class, each with the same positive count
    uniform = t.n_hists > 0 and set(t.kinds) == {(classes, True)}
    ranged = t.n_mins >= 2 and t.mins == {0.0} and t.maxs == {float(classes - 1)} and not t.n_hists
    if uniform or ranged:
        return (
            f"the {classes} classes are the {classes} samples of the batch, each its own class "
            "(a contrastive loss): its targets are the model's own embeddings, which move"
        )
    return None


def _labels_moved(hists: list[dict[int, float]]) -> str | None:
    """The label mix of the first half of the observed steps against the second half."""
    if len(hists) < MIN_OBSERVED:
        return None
    half = len(hists) // 2
    a, b = _sum(hists[:half]), _sum(hists[-half:])
    na, nb = sum(a.values()), sum(b.values())
    if na <= 0 or nb <= 0:
        return None
    classes = set(a) | set(b)
    tv = 0.5 * sum(abs(a.get(c, 0) / na - b.get(c, 0) / nb) for c in classes)
    noise = 2 * math.sqrt(len(classes) / min(na, nb))
    if tv > max(0.2, noise):
        return (
            f"the mix of target classes moved between the first and second half of the run "
            f"(total variation {tv:.2f}): targets produced by the run itself (assigned or "
            "bootstrapped), not labels from a fixed set"
        )
    return None


def _sum(hists: list[dict[int, float]]) -> dict[int, float]:
    out: dict[int, float] = {}
    for h in hists:
        for c, v in h.items():
            out[c] = out.get(c, 0.0) + v
    return out


def _targets_moved(stats: list[tuple[int, dict[str, float]]]) -> str | None:
    """Float targets: '' (falsy) when they stay put, a sentence when their level moved, None
    when observed too rarely to tell.

    Moved: one of the targets' mean/min/max trends with the step (Spearman's rank correlation
    at least 0.8, or 1 on fewer than 6 observed steps: fixed data sampled at random has no
    order), and the median of its last third is away from that of its first third by more than
    a fraction of the targets' typical range within a batch (a tenth for the mean, a quarter for
    the extremes, which vary more from batch to batch), or of that value's spread over the run
    when a batch holds one target."""
    obs = [d for _, d in stats if {"t_mean", "t_min", "t_max"} <= set(d)]
    keys = ("t_mean", "t_min", "t_max")
    if len(obs) >= 2 and len({tuple(d[k] for k in keys) for d in obs}) == 1:
        return ""  # the same targets on every observed step (full-batch training)
    width = statistics.median(d["t_max"] - d["t_min"] for d in obs) if obs else 0.0
    if len(obs) < (MIN_OBSERVED if width <= 0 else MIN_OBSERVED_WIDE):
        return None
    third = max(1, len(obs) // 3)
    need = 0.8 if len(obs) >= 6 else 1.0
    for stat, frac in (("t_mean", 0.1), ("t_min", 0.25), ("t_max", 0.25)):
        values = [d[stat] for d in obs]
        rho = spearman(values)
        if rho is None or abs(rho) < need - 1e-9:
            continue
        a, b = statistics.median(values[:third]), statistics.median(values[-third:])
        q = statistics.quantiles(values, n=4)
        scale = width if width > 0 else q[2] - q[0]
        if scale > 0 and abs(b - a) > frac * scale:
            name = {"t_mean": "mean", "t_min": "minimum", "t_max": "maximum"}[stat]
            return (
                f"the targets' {name} moved from {a:.4g} to {b:.4g} over the run, steadily "
                f"(rank correlation with the step {rho:+.2f}; their range within a batch is "
                f"{width:.3g}): targets the run produces and moves (returns, bootstrapped or "
                "TD targets, assigned boxes), not values from a fixed set"
            )
    return ""


def spearman(values: list[float]) -> float | None:
    """Rank correlation of `values` with their order (average ranks for ties)."""
    n = len(values)
    order = sorted(range(n), key=lambda i: values[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    mean = (n - 1) / 2
    sx = sum((r - mean) ** 2 for r in ranks)
    sy = sum((k - mean) ** 2 for k in range(n))
    if sx == 0 or sy == 0:
        return None
    return sum((r - mean) * (k - mean) for k, r in enumerate(ranks)) / math.sqrt(sx * sy)


def _whole(share: float) -> bool:
    """The standard losses are the whole loss (within batch-to-batch noise)."""
    return 0.8 <= share <= 1.25


def _standard_share(
    sites: dict[int, dict[str, Any]], data: Inputs
) -> tuple[float | None, tuple[float, float] | None]:
    """(share, summed): the share of the standard losses in the training loss; and when the
    logged loss is measured to be a sum over the step's backward passes, their share in it
    per pass and in the step's last backward root.

    A logged loss is compared as logged first. Out of [0.8, 1.25] it may be a sum over the
    step's micro-batches (the Hugging Face Trainer with gradient accumulation adds up their
    losses: 2x the loss of one call at accumulation 2), which is no hand-written term: that
    is taken only when both comparisons of like with like hold, the standard losses being the
    whole of the step's last backward root (the pass their stats were kept from) and the
    logged loss divided by the step's backward passes. A hand-written term beside them (a KL
    term of the loss's size) keeps the root apart from them, whatever the logged loss is."""
    order = tuple(sites)
    share = _share_against(order, data, "loss")
    if share is None or _whole(share) or not data.logged:
        return share, None
    per_pass = _share_against(order, data, "pass")
    summed = _share_against(order, data, "sum")
    if per_pass is not None and summed is not None and _whole(per_pass) and _whole(summed):
        return summed, (summed, per_pass)
    return share, None


def _share_against(order: tuple[int, ...], data: Inputs, against: str) -> float | None:
    """Median over the observed steps of (sum of the standard losses) / (a loss of the step).

    A sum-reduced class loss (its call counted the valid targets, `n_valid`) divided by a count
    of targets is still the standard objective, a mean: when the share read as is falls outside
    [0.8, 1.25], the share with each summed loss taken per valid target is used instead. The
    divisor need not be the call's own count: the Hugging Face Trainer divides the sum over the
    shifted labels (n - batch) by `num_items_in_batch`, counted before the shift (896.4 / 256
    for 248 valid tokens: 0.97 of the mean), which the tolerance covers as it does for a mean."""
    raw = data.share(order, False, against)
    if raw is None or _whole(raw):
        return raw
    mean = data.share(order, True, against)
    return mean if mean is not None and _whole(mean) else raw


def too_high_lr(
    tl: TimelineView,
    values: list[float],
    *,
    min_update: float = MIN_UPDATE,
    plateau: float = 0.95,
    data: Inputs | None = None,
) -> dict[str, Any] | None:
    """A learning rate far too high that does not blow the run up (gradient clipping, Adam's
    bounded steps, a decaying schedule): no NaN, no divergence to report, but no learning
    either. Both measured:

    - each step moves the weights by at least `min_update` of their initial norm
      (||Δθ_t|| / ||θ_0||, median over the params and the sampled steps after the first;
      a healthy step moves them by 1e-3 to a few 1e-2). Measured against the initial weights,
      not the current ones: weights a too-high lr has blown up make ||Δθ||/||θ|| look small;
    - the loss of the last fifth is no lower (within 1 - `plateau`) than the lowest of: the
      run's first loss (before any update); for a cross-entropy, ln C (a uniform guess) and the
      entropy of the labels seen (predicting the class frequencies, ignoring the input).

    How often clip_grad_norm_ cut the gradient is reported with it when the run clips.
    `data`: objective()'s parsed inputs (the update sizes and label counts), if at hand.
    """
    data = data if data is not None else ObjectiveScan().inputs(tl)
    moves = data.moves
    if len(moves) < 2 or statistics.median(moves) < min_update:
        return None
    w = max(5, len(values) // 5)
    last = statistics.median(values[-w:])
    refs = {"its first value": values[0]}
    classes = _class_counts(tl)
    if classes:
        refs[f"ln {classes[0]}, the loss of a uniform guess over the classes"] = math.log(
            classes[0]
        )
    entropy = _label_entropy(data.totals)
    if entropy is not None:
        refs["the entropy of the labels, the loss of predicting the class frequencies"] = entropy
    passes = _summed_passes(tl, data)
    if passes > 1:
        # the loss judged adds up each step's passes: the per-pass references times as many
        refs = {
            (f"{k} x {passes:g} backward passes a step" if k != "its first value" else k): (
                v if k == "its first value" else v * passes
            )
            for k, v in refs.items()
        }
    name, ref = min(refs.items(), key=lambda kv: kv[1])
    if not (ref > 0 and last >= plateau * ref):
        return None
    out: dict[str, Any] = {
        "update_to_initial": statistics.median(moves),
        "last": last,
        "reference": ref,
        "reference_text": f"no lower than {name} ({ref:.4g})",
    }
    clip = _clip_share(tl)
    if clip is not None:
        out.update(clip)
    return out


def uniform_guess(tl: TimelineView, data: Inputs) -> float | None:
    """The loss of a uniform guess over the classes (ln C, times the backward passes a logged
    loss sums), when a cross-entropy/NLL site recorded its number of classes; else None."""
    classes = _class_counts(tl)
    if not classes or len(set(classes)) != 1 or classes[0] < 2:
        return None  # several heads with their own class counts: no one uniform guess
    return math.log(classes[0]) * _summed_passes(tl, data)


def _class_counts(tl: TimelineView) -> list[int]:
    """The number of classes each cross-entropy/NLL site recorded, in event order."""
    return [
        e.get("classes")
        for e in tl.events("loss_input")
        if e.get("fn") in CLASS_FNS and e.get("classes")
    ]


def _summed_passes(tl: TimelineView, data: Inputs) -> float:
    """How many backward passes each step's logged loss adds up (the median over the observed
    steps), when it is measured to be their sum (_standard_share); else 1."""
    _, summed = _standard_share(_training_sites(tl, data), data)
    if summed is None:
        return 1.0
    counts = [
        len(tl.at("loss.backward", s) or ())
        for s in sorted({s for recs in data.stats.values() for s, _ in recs})
    ]
    counts = [c for c in counts if c >= 1]
    return float(statistics.median(counts)) if counts else 1.0


def _label_entropy(totals: dict[str, float]) -> float | None:
    """Entropy (nats) of the class-index targets seen on the observed steps, all sites."""
    n = sum(totals.values())
    if n < 100:
        return None
    return -sum(v / n * math.log(v / n) for v in totals.values() if v > 0)


def _clip_share(tl: TimelineView) -> dict[str, Any] | None:
    clip_max = dict(tl.series("schedule.clip_max"))
    norms: list[float] = []
    clipped = 0
    max_norm = None
    for step, ns in tl.series("schedule.clip_norm"):
        limits = clip_max.get(step) or []
        for n, m in zip(ns, limits, strict=False):
            if isinstance(n, int | float) and isinstance(m, int | float) and math.isfinite(n):
                norms.append(n)
                clipped += n > m
                max_norm = m
    if not norms or max_norm is None:
        return None
    return {
        "max_norm": max_norm,
        "clip_steps": len(norms),
        "clipped_steps": clipped,
        "median_grad_norm": statistics.median(norms),
    }


def updates_to_initial(tl: TimelineView) -> list[float]:
    """Per sampled step after the first, the median over params of ||Δθ_t|| / ||θ_0||, θ_0 the
    first measured weights (params initialized to zero are left out)."""
    norms = tl.series("params.norm")
    if not norms:
        return []
    initial = norms[0][1]
    moves = (move_of(step, upd, initial) for step, upd in tl.series("params.update"))
    return [m for m in moves if m is not None]

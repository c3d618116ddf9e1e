"""TD514 weight-decay-on-norms."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import Reader, fresh
from .._registry import rule
from .._util import common_module, optimizer_source


class DecayScan:
    """TD514's state between passes (rules/_incremental.py): each param's first and last
    measured norm, and the decay's pull Σ lr·wd per group summed from the first measured step,
    in step order (the same additions as a fresh pass); a pass reads the norms and lrs written
    since the last. The newest records (still being written) are folded on copies. New
    optimizer hparams or decay settings start the sums over."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key  # the decays and hparams the pulls were summed with
        self.norms = Reader("params.norm")
        self.lr_rewrites = 0
        self.readers = (self.norms,)
        self.count = 0
        self.start: int | None = None  # the first measured step
        self.end: int | None = None  # the last settled measured step
        self.first: dict[str, float] = {}
        self.last: dict[str, tuple[int, float]] = {}
        self.pulls: dict[str, float] = {}
        self.lr_done: int | None = None  # optim.lr summed for good up to this step

    def read(self, tl: TimelineView, wds: dict, hparams: dict) -> tuple:
        """(steps measured, first step, last step, first norms, last norms, pulls over
        [first step, last step)), the newest records included."""
        key = repr((sorted(wds.items()), sorted(hparams.items())))
        if key != self.key or not fresh(self, tl) or tl.rewrites("optim.lr") != self.lr_rewrites:
            self.__init__(key)
            self.lr_rewrites = tl.rewrites("optim.lr")
        settled, pending = self.norms.read(tl)
        for step, norms in settled:
            self._fold(step, norms, self.first, self.last)
            self.count += 1
            self.end = step
        first, last, end = self.first, self.last, self.end
        if pending:
            first, last = dict(first), dict(last)
            step, norms = pending[0]
            self._fold(step, norms, first, last)
            end = step
        count = self.count + len(pending)
        pulls = self.pulls
        if self.start is not None and end is not None:
            since = self.start - 1 if self.lr_done is None else self.lr_done
            lrs = tl.series_since("optim.lr", since)
            # Summed for good: below the last settled measured step, never the newest lr
            # record (its groups may still be written).
            good = min(self.end if self.end is not None else self.start, lrs[-1][0] if lrs else 0)
            for step, groups in lrs:
                if step >= good and pulls is self.pulls:
                    pulls = dict(pulls)  # the rest only for this pass
                if step >= end:
                    break
                _add_pull(pulls, groups, wds, hparams)
                if pulls is self.pulls:
                    self.lr_done = step
        return count, self.start, end, first, last, pulls

    def _fold(self, step: int, norms: Any, first: dict, last: dict) -> None:
        if self.start is None:
            self.start = step
        for name, v in (norms or {}).items():
            first.setdefault(name, v)
            last[name] = (step, v)


@rule(
    code="TD514",
    name="weight-decay-on-norms",
    severity=Severity.WARNING,
    summary="Weight decay is applied to normalization gains and biases (a warning when the "
    "gains measurably shrink from it, else info).",
    requires=("params.norm", "optim.lr"),
    events=("optimizer_hparams",),
    facts=("module_types", "optimizers"),
    priority=60,
    state=lambda: DecayScan(),
)
def weight_decay_on_norms(
    tl: TimelineView, state: DecayScan, *, min_shrink: float = 0.1, min_explained: float = 0.5
) -> Iterator[Finding]:
    """
    ## What it detects
    A param group with `weight_decay > 0` that holds the gains (`weight`) of normalization
    layers (LayerNorm, BatchNorm, GroupNorm, RMSNorm, ...), whose norm measurably shrinks
    during the run (by `min_shrink` or more) while the decay's own pull, summed over the run,
    accounts for at least `min_explained` of that shrinkage. Biases in decayed groups are listed.

    ## Why it matters
    A normalization layer's gain sets the scale of its features; weight decay pulls it toward
    0, which scales the normalized features down layer after layer, and decaying biases
    pulls them toward 0 for no regularization benefit. `optimizer(model.parameters(),
    weight_decay=...)` does it silently; the curves only show a slightly worse model.

    ## How it is measured
    Which params are norm gains comes from the module classes (`named_modules()`); each
    group's `weight_decay`, lr and momentum from the optimizer. The gains' norm ||γ|| is read
    before the step on the first and sampled steps (fused norms). The decay pull is
    Σ lr·wd over the observed steps, divided by (1 − momentum) for SGD with momentum (the
    decay term is accumulated in the momentum buffer); for Adam with coupled (L2) decay the
    true pull also depends on the gradient scale.

    ## Example
    ```python
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    ```

    ## Fix
    ```python
    decay = [p for p in model.parameters() if p.dim() >= 2]       # weight matrices, kernels
    no_decay = [p for p in model.parameters() if p.dim() < 2]     # norm gains, biases
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-3},
                           {"params": no_decay, "weight_decay": 0.0}], lr=0.1, momentum=0.9)
    ```

    Without a measured shrinkage, the optimizer's configuration alone is reported as
    info: which param groups decay norm gains and biases, how many, the decay per step
    lr·wd and the steps it alone would take to halve them. Info because this is a common,
    usually mild choice: torchvision's ResNet recipes (SGD, wd 1e-4) decay BatchNorm gains
    and train well, while nanoGPT, minGPT and Hugging Face exclude them; a gain that the
    gradient holds up loses only a little to the decay. Measured on a 2-block pre-LN
    transformer learning a recurrence (AdamW lr 1e-3, wd 0.1, 400 steps, torch 2.13 CPU):
    with the gains and biases decayed the final loss was 0.1349 and the LayerNorm gains'
    norms ended at 0.99-1.09 of their start; with them excluded, 0.1334 and 1.03-1.13:
    a 1% difference.

    ## Known false positives
    Gains that the loss itself drives down while a strong decay is applied are reported (the
    decay is then still part of the shrinkage). Decay on norms with a small pull over the run
    (AdamW's default 0.01 at lr 1e-3 over a short run) is not reported: nothing is measured.
    """
    types = tl.fact("module_types") or {}
    norms = _norm_modules(types)
    count, start, end, first_norm, last_norm, pulls = state.read(tl, _decays(tl), _hparams(tl))
    if count < 2:
        yield from _configured(tl, norms)
        return
    observed = [start, end]
    shrunk: dict[str, dict[str, Any]] = {}
    biases: list[str] = []
    decayed_groups: dict[str, float] = {}
    source = None
    for opt in tl.fact("optimizers") or []:
        for g in opt["groups"]:
            wd = g.get("weight_decay") or 0.0
            if wd <= 0:
                continue
            for name in g["params"]:
                if name is None:
                    continue
                if name.endswith(".bias"):
                    biases.append(name)
                if not (name.endswith(".weight") and name[:-7] in norms):  # its module
                    continue
                decayed_groups[g["id"]] = wd
                source = source or optimizer_source(opt)
                a, (_, b) = first_norm.get(name), last_norm.get(name, (0, None))
                if not a or b is None:
                    continue
                shrink = 1 - b / a
                pull = pulls.get(g["id"], 0.0)
                if shrink >= min_shrink and pull >= min_explained * -math.log(1 - shrink):
                    shrunk[name] = {
                        "group": g["id"],
                        "weight_decay": wd,
                        "norm_first": round(a, 4),
                        "norm_last": round(b, 4),
                        "shrink": round(shrink, 4),
                        "decay_pull": round(pull, 4),
                    }
    if not shrunk:
        yield from _configured(tl, norms)
        return
    names = sorted(shrunk)
    worst = max(names, key=lambda n: shrunk[n]["shrink"])
    w = shrunk[worst]
    yield tl.finding(
        title=f"weight decay shrinks {len(names)} normalization gain(s): `{worst}` lost "
        f"{w['shrink']:.0%} of its norm in steps {observed[0]}–{observed[-1]}",
        step=observed[-1],
        evidence={
            "gains": shrunk,
            "decayed_groups": decayed_groups,
            "decayed_biases": len(biases),
            "observed_steps": [observed[0], observed[-1]],
        },
        where=Where(module=common_module(names), params=tuple(names), source=source),
        cause=f"param group(s) {', '.join(sorted(decayed_groups))} apply weight_decay to "
        f"normalization gains ({len(names)} shrank, e.g. ||{worst}|| {w['norm_first']:g} → "
        f"{w['norm_last']:g}; the decay alone pulls by {w['decay_pull']:.3g} in log-scale over "
        f"these steps) and to {len(biases)} bias(es): the decay scales the normalized "
        "features down instead of regularizing",
        fix="put norm gains and biases in a param group with weight_decay=0: "
        "decay = [p for p in model.parameters() if p.dim() >= 2], the rest with "
        "weight_decay=0.0",
    )


def _configured(tl: TimelineView, norms: set[str]) -> Iterator[Finding]:
    """Info: the optimizer's own configuration decays norm gains/biases (nothing shrank)."""
    groups: dict[str, dict[str, Any]] = {}
    params: list[str] = []
    source = None
    for opt in tl.fact("optimizers") or []:
        for g in opt["groups"]:
            wd = g.get("weight_decay") or 0.0
            if wd <= 0:
                continue
            held = [
                n
                for n in g["params"]
                if n and n.endswith((".weight", ".bias")) and n.rsplit(".", 1)[0] in norms
            ]
            if not held:
                continue
            lr = g.get("lr") or 0.0
            groups[g["id"]] = {
                "optimizer": opt.get("class"),
                "weight_decay": wd,
                "lr": lr,
                "norm_gains": sum(n.endswith(".weight") for n in held),
                "norm_biases": sum(n.endswith(".bias") for n in held),
                "other_biases": sum(
                    n.endswith(".bias") and n not in held for n in g["params"] if n
                ),
                "decay_per_step": lr * wd,
            }
            params.extend(held)
            source = source or optimizer_source(opt)
    if not groups:
        return
    gid, worst = max(groups.items(), key=lambda kv: kv[1]["decay_per_step"])
    per_step = worst["decay_per_step"]
    half_life = math.log(2) / per_step if per_step > 0 else None
    gains = sum(g["norm_gains"] for g in groups.values())
    nbias = sum(g["norm_biases"] for g in groups.values())
    life = f"; alone it would halve them in {half_life:,.0f} steps" if half_life else ""
    pull = f"each step pulls them toward 0 by a factor (1 - lr·wd) = 1 - {per_step:.2g} (before momentum){life}"
    hparams = _hparams(tl)
    if worst["optimizer"] in COUPLED_ADAPTIVE and not (hparams.get(gid) or {}).get("decoupled"):
        # Coupled (L2) decay in an adaptive optimizer: wd·θ joins the gradient before the
        # per-element normalisation, so the pull is not lr·wd (up to lr where the gradient
        # is small): no factor nor half-life can be stated from the configuration.
        half_life = None
        pull = (
            f"{worst['optimizer']} adds wd·θ to their gradient before its per-element "
            "normalisation (coupled L2 decay), so the pull per step is not lr·wd: it depends "
            "on their gradient's scale (up to lr where the gradient is small)"
        )
    yield tl.finding(
        title=f"weight decay applies to {gains} normalization gain(s) and {nbias} norm "
        f"bias(es) in {len(groups)} param group(s) (lr·wd = {per_step:.2g} per step in "
        f"{gid}); no shrinkage measured",
        step=1,
        evidence={"groups": groups, "half_life_steps": half_life},
        where=Where(module=common_module(params), params=tuple(sorted(params)), source=source),
        cause=f"param group(s) {', '.join(sorted(groups))} have weight_decay > 0 and hold "
        f"normalization gains and biases: {pull}. The gradient usually holds "
        "them up, so the effect is mild; the gains' norm did not measurably shrink over the "
        "observed steps",
        fix="usual practice (nanoGPT, minGPT, Hugging Face) puts norm gains and biases in a "
        "param group with weight_decay=0.0: decay = [p for p in model.parameters() if "
        "p.dim() >= 2], the rest with weight_decay=0.0. Many classic recipes (torchvision "
        "ResNets, SGD with wd 1e-4) keep them decayed and train fine",
        confidence=0.6,
        severity=Severity.INFO,
    )


# Optimizers whose weight_decay is coupled L2 added to the gradient before an adaptive,
# per-element normalisation (unless the group says decoupled).
COUPLED_ADAPTIVE = frozenset({"Adam", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta"})


def _norm_modules(types: dict[str, str]) -> set[str]:
    """The normalization modules' names: one set per pass, so that a param is checked by a
    lookup (two calls per param per pass were 30,000 a structural step on 10,000 tensors)."""
    return {m for m, cls in types.items() if cls and "Norm" in cls and cls != "LocalResponseNorm"}


def _hparams(tl: TimelineView) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in tl.events("optimizer_hparams"):
        out.update(e.get("groups") or {})
    return out


def _decays(tl: TimelineView) -> dict[str, float]:
    return {
        g["id"]: g.get("weight_decay") or 0.0
        for o in tl.fact("optimizers") or []
        for g in o["groups"]
    }


def _add_pull(
    out: dict[str, float], lrs: Any, wds: dict[str, float], hparams: dict[str, dict[str, Any]]
) -> None:
    """Add one step's lr·wd (/(1 − momentum) for SGD) per group to `out`: summed over steps,
    the log-shrink the decay alone would cause."""
    for gid, lr in (lrs or {}).items():
        if not isinstance(lr, int | float):
            continue
        hp = hparams.get(gid) or {}
        m = hp.get("momentum") or 0.0
        damp = hp.get("dampening") or 0.0
        boost = (1 - damp) / (1 - m) if 0 < m < 1 and not hp.get("decoupled") else 1.0
        out[gid] = out.get(gid, 0.0) + lr * wds.get(gid, 0.0) * boost

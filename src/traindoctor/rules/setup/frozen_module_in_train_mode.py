"""TD516 frozen-module-in-train-mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

MAX_FINDINGS = 3


@rule(
    code="TD516",
    name="frozen-module-in-train-mode",
    severity=Severity.WARNING,
    summary="A frozen module is left in train mode: its BatchNorm statistics drift, its "
    "dropout is active.",
    requires=("modes.frozen_bn_drift", "modes.frozen_params_moved"),
    events=("frozen_modules",),
    priority=45,
)
def frozen_module_in_train_mode(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A module whose parameters are all frozen (`requires_grad=False`) while the rest of the
    model trains, kept in train mode: its BatchNorm running statistics keep changing with
    every training batch (measured), or its Dropout is active although nothing it computes
    is trained (its output carries no graph). Names the frozen module and the modules in it.

    ## Why it matters
    Freezing a pretrained backbone with `requires_grad=False` stops the optimizer, not
    BatchNorm: in train mode it normalizes with each batch's statistics and overwrites the
    pretrained running statistics with those of the new data, so the "frozen" features
    change under the head and differ between training and evaluation. Dropout in a frozen
    feature extractor adds noise to features that nothing learns from.

    ## How it is measured
    On the first steps and the sampled steps, the module tree is walked for maximal modules
    whose parameters are all frozen (while some parameter of the watched models trains) and
    that contain BatchNorm/InstanceNorm with running statistics or Dropout with p > 0. At the
    optimizer step their `training` flags are read; the running mean and variance of each
    such BatchNorm are copied on the device and their relative change since the previous
    observed step (||new - old|| / ||old||) is read back with the other deferred values. A
    forward hook on the frozen module records whether its output requires grad. It fires
    for BatchNorm that was in train mode with a change > 0, and for Dropout in train mode in a
    frozen module whose output carries no graph. Gradient-free (validation) forwards are
    TD403's business and are not looked at. A sample of the frozen module's parameters (its
    BatchNorms' affine ones) is compared between observed steps too: when they changed, no
    optimizer holds them but the user's code updates them (a momentum/EMA target: BYOL's
    target network, MoCo's key encoder, a mean teacher), a module that is not frozen but
    follows the trained one, and whose train mode is the published method's. It is not
    reported.

    ## Example
    ```python
    for p in model.backbone.parameters():
        p.requires_grad = False
    model.train()                       # the backbone's BatchNorm is in train mode too
    ```

    ## Fix
    ```python
    model.train()
    model.backbone.eval()               # after every model.train(): statistics stay fixed
    ```

    ## Known false positives
    Re-estimating BatchNorm statistics on purpose on new data (domain adaptation such as
    AdaBN) while the weights stay frozen. Dropout alone (no BatchNorm drifting) is reported as
    info: it only adds noise to the frozen features, often on purpose (a frozen encoder
    under the Hugging Face Trainer, whose `train()` turns it on), with no harm measured on
    the head's held-out loss there.
    """
    drift = _max_drift(tl)
    moved = _moved(tl)
    events = tl.events("frozen_modules")
    seen: dict[str, dict[str, Any]] = {}
    for e in events:
        for root, info in (e.get("modules") or {}).items():
            entry = seen.setdefault(
                root, {"bn_train": {}, "dropout_train": set(), "step": None, "no_graph": False}
            )
            for n in info.get("bn_train") or ():
                entry["bn_train"].setdefault(n, e["step"])
            if info.get("output_requires_grad") is False:
                entry["no_graph"] = True
                for n in info.get("dropout_train") or ():
                    entry["dropout_train"].add(n)
                    entry["step"] = entry["step"] or e["step"]
    found = 0
    for root, entry in seen.items():
        if root in moved:
            continue  # updated in place (an EMA/momentum target), not frozen
        drifting = {n: drift[n] for n in entry["bn_train"] if drift.get(n, (0.0, None))[0] > 0.0}
        dropout = sorted(entry["dropout_train"])
        if not drifting and not dropout:
            continue
        yield _finding(tl, root, drifting, dropout, entry)
        found += 1
        if found >= MAX_FINDINGS:
            return


def _max_drift(tl: TimelineView) -> dict[str, tuple[float, int]]:
    """BatchNorm name -> (largest relative change of its running statistics, its step)."""
    out: dict[str, tuple[float, int]] = {}
    for step, values in tl.series("modes.frozen_bn_drift"):
        for name, v in (values or {}).items():
            if isinstance(v, int | float) and v == v and v > out.get(name, (0.0, 0))[0]:
                out[name] = (float(v), step)
    return out


def _moved(tl: TimelineView) -> set[str]:
    """Frozen modules whose parameters changed between two observed steps."""
    out: set[str] = set()
    for _, values in tl.series("modes.frozen_params_moved"):
        for name, v in (values or {}).items():
            if isinstance(v, int | float) and v == v and v > 0.0:
                out.add(name)
    return out


def _finding(
    tl: TimelineView,
    root: str,
    drifting: dict[str, tuple[float, int]],
    dropout: list[str],
    entry: dict[str, Any],
) -> Finding:
    parts, causes = [], []
    if drifting:
        worst = max(drifting, key=lambda n: drifting[n][0])
        value, at = drifting[worst]
        parts.append(f"its BatchNorm running statistics drift (up to {value:.2%} per interval)")
        causes.append(
            f"{len(drifting)} BatchNorm module(s) in `{root}` were in train mode at the "
            f"optimizer step and their running mean/var changed while every parameter of "
            f"`{root}` is frozen: the largest relative change, {value:.3g}, was `{worst}` "
            f"between the observed steps before step {at} and step {at}"
        )
    if dropout:
        parts.append(f"{len(dropout)} Dropout module(s) are active")
        causes.append(
            f"Dropout ({', '.join(f'`{n}`' for n in dropout[:5])}) is in train mode inside "
            f"`{root}`, whose output carries no graph: nothing it computes trains, and dropout "
            "only adds noise to its features"
        )
    step = min([s for _, s in drifting.values()] + ([entry["step"]] if dropout else []))
    return tl.finding(
        title=f"Frozen module `{root}` is in train mode: {' and '.join(parts)}",
        step=step,
        evidence={
            "module": root,
            "bn_drift": {n: round(v, 6) for n, (v, _) in sorted(drifting.items())[:20]},
            "bn_in_train_mode": sorted(entry["bn_train"])[:20],
            "dropout_in_train_mode": dropout[:20],
            "output_carries_graph": not entry["no_graph"],
        },
        where=Where(module=root),
        cause="; ".join(causes) + ".",
        fix=f"put it in eval mode after every `model.train()`: `model.train(); "
        f"{_attr(root)}.eval()` (or override the model's `train()` to keep `{root}` in eval)",
        confidence=0.9 if drifting else 0.6,
        # Dropout alone only adds noise to frozen features: often on purpose (a frozen
        # encoder under the Hugging Face Trainer), and no harm measured there. Drifting
        # statistics change the features themselves.
        severity=None if drifting else Severity.INFO,
    )


def _attr(root: str) -> str:
    return "model" if root == "<model>" else f"model.{root}"

"""`watch()`: the one-line entry point of the plain-loop API, with input checks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .doctor import Doctor
from .errors import UsageError


def watch(
    model: torch.nn.Module | dict[str, torch.nn.Module] | Iterable[torch.nn.Module],
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
    scaler: Any = None,
    *,
    out_dir: str | Path = "traindoctor-runs",
    budget: float = 0.03,
    console: bool = True,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> Doctor:
    """Attach traindoctor to a model and its optimizer(s). Returns the Doctor.

    Use `doc.log(loss=...)` in the loop (optional), `with doc.validating(model):` for evaluation
    and `doc.close()` (or `with td.watch(...) as doc:`) at the end to get the report.

    Without an optimizer (`td.watch(model)`), a loop that updates the weights by hand
    (`p.data.add_(p.grad, alpha=-lr)`, `p -= lr * p.grad` under no_grad) is watched: each
    update of the params that got a gradient is a step.
    """
    models = _models(model)
    optimizers = _optimizers(optimizer)
    if scaler is not None and not callable(getattr(scaler, "scale", None)):
        raise UsageError(
            f"watch(scaler=...) takes a torch.amp.GradScaler, got {type(scaler).__name__}; "
            "pass the scaler you call scaler.scale(loss) on, or leave it out"
        )
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget <= 1:
        raise UsageError(
            f"watch(budget=...) got {budget!r}; pass the overhead allowed, as a fraction of "
            "step time in (0, 1], e.g. budget=0.03"
        )
    doc = Doctor(
        out_dir=out_dir,
        budget=budget,
        mode="watch",
        console=console,
        select_codes=select,
        ignore_codes=ignore,
    )
    doc.attach(models, optimizers, scaler)
    return doc


def _models(model: Any) -> dict[str, torch.nn.Module]:
    hint = "pass the nn.Module you train, e.g. td.watch(model, optimizer)"
    if isinstance(model, torch.nn.Module):
        return {"": model}
    if model is None:
        raise UsageError(f"watch() got model=None; {hint}")
    if isinstance(model, dict):
        items = list(model.items())
    elif isinstance(model, list | tuple):
        items = [(f"{type(m).__name__.lower()}{i}", m) for i, m in enumerate(model)]
    else:
        raise UsageError(
            f"watch() takes a torch.nn.Module as model, got {type(model).__name__}; {hint}"
        )
    if not items:
        raise UsageError(f"watch() got no models; {hint}")
    for name, m in items:
        if not isinstance(m, torch.nn.Module):
            raise UsageError(
                f"watch() model {name!r} is a {type(m).__name__}, not an nn.Module; {hint}"
            )
    return {f"{name}.": m for name, m in items}


def _optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    hint = "pass the optimizer that steps the model, e.g. torch.optim.AdamW(model.parameters())"
    if isinstance(optimizer, torch.optim.Optimizer):
        opts = [optimizer]
    elif optimizer is None:
        return []  # the loop updates the weights by hand (see handsteps.py)
    elif isinstance(optimizer, list | tuple):
        opts = list(optimizer)
    else:
        raise UsageError(
            f"watch() takes a torch.optim.Optimizer, got {type(optimizer).__name__}; {hint}"
        )
    if not opts:
        raise UsageError(f"watch() got an empty list of optimizers; {hint}")
    opts = [unwrap_optimizer(o) for o in opts]
    for opt in opts:
        if not isinstance(opt, torch.optim.Optimizer):
            raise UsageError(
                f"watch() got a {type(opt).__name__} object among the optimizers; {hint}"
            )
        if sum(len(g["params"]) for g in opt.param_groups) == 0:
            raise UsageError(
                f"the {type(opt).__name__} passed to watch() holds no parameters; "
                "build it from the model's parameters, e.g. AdamW(model.parameters(), lr=1e-3)"
            )
    return opts


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside a framework's wrapper (Accelerate's AcceleratedOptimizer and
    DeepSpeed's keep it in `.optimizer`, Lightning's LightningOptimizer in `._optimizer`): the
    one whose step() really runs, with torch's hook dicts; the object itself otherwise."""
    for _ in range(4):
        if _hookable(optimizer):
            return optimizer
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            return optimizer
        optimizer = inner
    return optimizer


def _hookable(optimizer: Any) -> bool:
    # A real torch optimizer has run Optimizer.__init__, which creates the hook dicts.
    return isinstance(optimizer, torch.optim.Optimizer) and hasattr(
        optimizer, "_optimizer_step_pre_hooks"
    )

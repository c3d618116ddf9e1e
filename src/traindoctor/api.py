"""`watch()`: the one-line entry point of the plain-loop API, with input checks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ._validate import WATCH_OPTIONS, check_options, reject_unknown, show
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
    **unknown: Any,
) -> Doctor:
    """Attach traindoctor to a model and its optimizer(s). Returns the Doctor.

    Use `doc.log(loss=...)` in the loop (optional), `with doc.validating(model):` for evaluation
    and `doc.close()` (or `with td.watch(...) as doc:`) at the end to get the report.

    Without an optimizer (`td.watch(model)`), a loop that updates the weights by hand
    (`p.data.add_(p.grad, alpha=-lr)`, `p -= lr * p.grad` under no_grad) is watched: each
    update of the params that got a gradient is a step.
    """
    reject_unknown("watch", unknown, ("model", "optimizer", "scaler", *WATCH_OPTIONS))
    models = _models(model)
    optimizers = _optimizers(optimizer)
    _check_scaler(scaler)
    opts = check_options(
        "watch", out_dir=out_dir, budget=budget, console=console, select=select, ignore=ignore
    )
    doc = Doctor(
        out_dir=opts["out_dir"],
        budget=opts["budget"],
        mode="watch",
        console=opts["console"],
        select_codes=opts["select"],
        ignore_codes=opts["ignore"],
    )
    doc.attach(models, optimizers, scaler)
    return doc


def _check_scaler(scaler: Any) -> None:
    if scaler is None or callable(getattr(scaler, "scale", None)):
        return
    hint = "pass the scaler you call scaler.scale(loss) on, or leave it out"
    if isinstance(scaler, int | float) and not isinstance(scaler, bool):
        hint += f" (the budget is keyword-only: watch(model, optimizer, budget={scaler!r}))"
    raise UsageError(f"watch(scaler=...) takes a torch.amp.GradScaler, got {show(scaler)}; {hint}")


def _models(model: Any) -> dict[str, torch.nn.Module]:
    hint = "pass the nn.Module you train (or a dict/list of them), e.g. td.watch(model, optimizer)"
    if isinstance(model, torch.nn.Module):
        return {"": model}
    if model is None:
        raise UsageError(f"watch() got model=None; {hint}")
    if isinstance(model, torch.optim.Optimizer):
        raise UsageError(
            f"watch() got an optimizer ({type(model).__name__}) as model; pass the model first: "
            "td.watch(model, optimizer)"
        )
    if isinstance(model, dict):
        items = list(model.items())
    elif isinstance(model, list | tuple):
        items = [(f"{type(m).__name__.lower()}{i}", m) for i, m in enumerate(model)]
    else:
        raise UsageError(f"watch() takes a torch.nn.Module as model, got {show(model)}; {hint}")
    if not items:
        raise UsageError(f"watch() got an empty {type(model).__name__} of models; {hint}")
    for name, m in items:
        if not isinstance(name, str):
            raise UsageError(
                f"watch() got the model key {show(name)}; pass a dict with string keys, "
                "e.g. td.watch({'gen': g, 'disc': d}, [opt_g, opt_d])"
            )
        if not isinstance(m, torch.nn.Module):
            raise UsageError(f"watch() model {name!r} is {show(m)}, not an nn.Module; {hint}")
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
        raise UsageError(f"watch() takes a torch.optim.Optimizer, got {show(optimizer)}; {hint}")
    if not opts:
        raise UsageError(f"watch() got an empty list of optimizers; {hint}")
    opts = [unwrap_optimizer(o) for o in opts]
    for opt in opts:
        if not isinstance(opt, torch.optim.Optimizer):
            raise UsageError(f"watch() got {show(opt)} among the optimizers; {hint}")
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

"""Hugging Face Accelerate: watch a loop whose objects went through `accelerator.prepare`.

`accelerator.prepare` wraps the optimizer in an `AcceleratedOptimizer`. That wrapper subclasses
`torch.optim.Optimizer` without calling its `__init__`, so torch's step hooks never run on it:
traindoctor hooks the torch optimizer inside, whose `step()` runs only on the micro-batches
where the accumulation context syncs (and not at all when the GradScaler skips the step). The
prepared model may be wrapped too (DDP, `torch.compile`); its parameters are the inner
module's, so either works, and the inner module gives the names the user knows.

Nothing here imports accelerate: the wrappers are recognised by their attributes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .._validate import reject_unknown, show
from ..api import unwrap_optimizer, watch_with
from ..doctor import Doctor
from ..errors import UsageError
from ..options import WATCH_OPTIONS, Options


def unwrap_model(model: Any) -> Any:
    """The module the user built, inside DDP/FSDP (`.module`) or `torch.compile` (`._orig_mod`)."""
    for _ in range(4):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model


def watch(
    accelerator: Any,
    model: torch.nn.Module | dict[str, torch.nn.Module] | Iterable[torch.nn.Module],
    optimizer: Any = None,
    *,
    out_dir: str | Path = "traindoctor-runs",
    budget: float = 0.03,
    console: bool = True,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    export: Any = "auto",
    **unknown: Any,
) -> Doctor:
    """`td.watch` for a loop run by an `accelerate.Accelerator`.

    Pass the prepared model and optimizer (`model, optimizer = accelerator.prepare(...)`);
    the accelerator's GradScaler (fp16 mixed precision) is watched too, so the steps it skips
    (`accelerator.optimizer_step_was_skipped`) are seen as such.
    """
    caller = "traindoctor.accelerate.watch"
    reject_unknown(caller, unknown, ("accelerator", "model", "optimizer", *WATCH_OPTIONS))
    if isinstance(accelerator, torch.nn.Module | torch.optim.Optimizer) or not callable(
        getattr(accelerator, "prepare", None)
    ):
        raise UsageError(
            f"{caller}() takes the Accelerator first, got {show(accelerator)}; pass "
            "watch(accelerator, model, optimizer) with the objects accelerator.prepare returned"
        )
    if optimizer is None:
        raise UsageError(
            f"{caller}() got no optimizer; pass watch(accelerator, model, optimizer) with the "
            "optimizer accelerator.prepare returned"
        )
    options = Options.checked(
        caller,
        out_dir=out_dir,
        budget=budget,
        console=console,
        select=select,
        ignore=ignore,
        export=export,
    )
    models: Any
    if isinstance(model, dict):
        models = {k: unwrap_model(m) for k, m in model.items()}
    elif isinstance(model, list | tuple):
        models = [unwrap_model(m) for m in model]
    else:
        models = unwrap_model(model)
    opts = (
        [unwrap_optimizer(o) for o in optimizer]
        if isinstance(optimizer, list | tuple)
        else unwrap_optimizer(optimizer)
    )
    doc = watch_with(models, opts, getattr(accelerator, "scaler", None), options)
    doc.framework = "accelerate"
    doc.timeline.facts["framework"] = "accelerate"
    return doc

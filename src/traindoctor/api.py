"""`watch()`: the one-line entry point of the plain-loop API, with input checks."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from . import config
from ._validate import check_out_dir, reject_unknown, show
from .doctor import Doctor
from .errors import UsageError
from .options import WATCH_OPTIONS, Options


def watch(
    model: torch.nn.Module | dict[str, torch.nn.Module] | Iterable[torch.nn.Module],
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
    scaler: Any = None,
    *,
    out_dir: str | Path = config.DEFAULT_OUT_DIR,
    budget: float = 0.03,
    console: bool = True,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    export: str | Iterable[str] | None = "auto",
    **unknown: Any,
) -> Doctor:
    """Attach traindoctor to a model and its optimizer(s). Returns the Doctor.

    Use `doc.log(loss=...)` in the loop (optional), `with doc.validating(model):` for evaluation
    and `doc.close()` (or `with td.watch(...) as doc:`) at the end to get the report.

    Without an optimizer (`td.watch(model)`), a loop that updates the weights by hand
    (`p.data.add_(p.grad, alpha=-lr)`, `p -= lr * p.grad` under no_grad) is watched: each
    update of the params that got a gradient is a step.

    `[tool.traindoctor]` in the nearest pyproject.toml above the working directory applies
    (traindoctor.config): its rule selection, per-rule options and `out` (over `out_dir`'s
    default); a non-empty `select` replaces its selection and `ignore`
    removes rules on top, as the command line's flags do.

    `export`: the experiment trackers the findings, the run's status and the measured per-layer
    quantities are posted to (integrations/trackers/): "auto" (default: an active W&B run, open
    TensorBoard SummaryWriters, an active MLflow run), a list of "wandb", "tensorboard",
    "mlflow", or None for none (TRAINDOCTOR_EXPORT=none too).
    """
    reject_unknown("watch", unknown, ("model", "optimizer", "scaler", *WATCH_OPTIONS))
    models = _models(model)
    optimizers = _optimizers(optimizer)
    _check_scaler(scaler)
    options = Options.checked(
        "watch",
        out_dir=out_dir,
        budget=budget,
        console=console,
        select=select,
        ignore=ignore,
        export=export,
    )
    return _watch(models, optimizers, scaler, options)


def watch_with(
    model: torch.nn.Module | dict[str, torch.nn.Module] | Iterable[torch.nn.Module],
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None,
    scaler: Any,
    options: Options,
) -> Doctor:
    """`watch` for an entry point that built its `Options` itself (traindoctor.accelerate):
    the model, optimizer and scaler are checked as `watch` checks them."""
    models = _models(model)
    optimizers = _optimizers(optimizer)
    _check_scaler(scaler)
    return _watch(models, optimizers, scaler, options)


def _watch(
    models: dict[str, torch.nn.Module],
    optimizers: list[torch.optim.Optimizer],
    scaler: Any,
    options: Options,
) -> Doctor:
    """`[tool.traindoctor]` applies under `options` (its selection, then `options.select` /
    `ignore`; its `out` over the default out_dir)."""
    settings = config.for_watch(options.select, options.ignore)
    out_dir = options.out_dir
    if out_dir is config.DEFAULT_OUT_DIR and settings.out is not None:
        out_dir = settings.out
        check_out_dir("", out_dir, flag=f"{settings.path} {config.TABLE} out")
    # The selection is in settings.rules(): the Doctor selects nothing more.
    doc = Doctor(
        options=options.but(out_dir=out_dir, mode="watch", select=(), ignore=()),
        rules=settings.rules(),
    )
    doc.timeline.facts["config"] = settings.describe()
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


def explain_gradients(
    loss: torch.Tensor, params: Iterable[torch.Tensor] | None = None, *, limit: int | None = None
) -> Any:
    from . import gradpath

    if not isinstance(loss, torch.Tensor):
        raise UsageError(
            f"explain_gradients(loss) takes the loss tensor, got {show(loss)}; pass the scalar "
            "loss you would call backward() on, e.g. td.explain_gradients(loss)"
        )
    if loss.numel() != 1:
        raise UsageError(
            f"explain_gradients(loss) takes a scalar loss, got a tensor of shape "
            f"{tuple(loss.shape)}; pass the reduced loss, e.g. td.explain_gradients(loss.mean())"
        )
    if loss.grad_fn is None:
        raise UsageError(
            "explain_gradients(loss): the loss has no grad_fn (computed under no_grad, from "
            ".detach()/.item()/.data or numpy): no gradient flows at all; pass a loss computed "
            "from the model's output with gradients enabled"
        )
    if params is not None:
        params = _check_params(params)
    if limit is None:
        limit = gradpath.MAX_NODES
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UsageError(
            f"explain_gradients(limit=...) got {show(limit)}; pass the most autograd nodes to "
            f"walk, a whole number >= 1 (default {gradpath.MAX_NODES})"
        )
    return gradpath.explain_gradients(loss, params, limit=limit)


def _check_params(params: Any) -> list[torch.Tensor]:
    hint = "pass tensors that require grad, e.g. params=model.parameters(), or leave it out"
    if isinstance(params, torch.nn.Module):
        raise UsageError(
            f"explain_gradients(params=...) got a module ({type(params).__name__}); "
            "pass its parameters: params=model.parameters()"
        )
    if isinstance(params, torch.Tensor):
        params = [params]
    try:
        items = list(params)
    except TypeError:
        raise UsageError(f"explain_gradients(params=...) got {show(params)}; {hint}") from None
    if not items:
        raise UsageError(f"explain_gradients(params=...) got no tensors; {hint}")
    for p in items:
        if not isinstance(p, torch.Tensor):
            raise UsageError(f"explain_gradients(params=...) got {show(p)} among them; {hint}")
        if not p.requires_grad:
            raise UsageError(
                "explain_gradients(params=...) got a tensor of shape "
                f"{tuple(p.shape)} that does not require grad; {hint}"
            )
    return items


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[Any],
    metrics: Any,
    step_fn: Any = None,
    *,
    doctor: Any = None,
    prefix: str = "val_",
) -> dict[str, float]:
    from . import evaluation

    example = "e.g. td.evaluate(model, val_loader, {'auroc': BinaryAUROC()})"
    if not isinstance(model, torch.nn.Module):
        raise UsageError(
            f"evaluate() takes the torch.nn.Module to validate first, got {show(model)}; "
            f"pass {example[5:]}"
        )
    if isinstance(model, torch.nn.Module) and isinstance(loader, torch.nn.Module | dict):
        raise UsageError(
            f"evaluate() got {show(loader)} as the loader; pass the model, the validation "
            f"loader, then the metrics, {example}"
        )
    if isinstance(loader, str | bytes) or not (
        hasattr(loader, "__iter__") or hasattr(loader, "__getitem__")
    ):
        raise UsageError(
            f"evaluate() takes an iterable of batches as loader, got {show(loader)}; pass the "
            f"validation DataLoader, {example}"
        )
    if isinstance(metrics, dict):
        if not metrics:
            raise UsageError(
                f"evaluate() got an empty dict of metrics; pass at least one, {example}"
            )
        from torchmetrics import Metric

        for name, m in metrics.items():
            if not isinstance(m, Metric):
                raise UsageError(
                    f"evaluate() metric {name!r} is {show(m)}, not a torchmetrics Metric; "
                    f"pass Metric objects, {example}"
                )
    if step_fn is not None and not callable(step_fn):
        raise UsageError(
            f"evaluate(step_fn=...) got {show(step_fn)}; pass a function (model, batch) -> "
            "(preds, target), e.g. step_fn=lambda model, batch: (model(batch[0]), batch[1])"
        )
    if doctor is not None and not isinstance(doctor, Doctor):
        raise UsageError(
            f"evaluate(doctor=...) got {show(doctor)}; pass the Doctor that td.watch() "
            "returned, or leave it out (the attached one is found)"
        )
    if not isinstance(prefix, str):
        raise UsageError(
            f"evaluate(prefix=...) got {show(prefix)}; pass a string such as prefix='val_'"
        )
    # evaluate() warns at its caller's line (stacklevel=2): re-issued here, at the user's.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = evaluation.evaluate(model, loader, metrics, step_fn, doctor=doctor, prefix=prefix)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    return values

"""Hugging Face `transformers.Trainer`: one callback runs a traindoctor Doctor over `train()`.

    trainer = Trainer(..., callbacks=[traindoctor.transformers.TraindoctorCallback()])

What the Trainer does and how the Doctor sees it:
- `on_train_begin` gets the model and the optimizer (an `AcceleratedOptimizer`: the torch
  optimizer inside is hooked, see integrations/accelerate.py) and the Doctor attaches there;
  `on_train_end` closes it and keeps the report on the callback (`callback.report`).
- The loss: `training_step` calls `accelerator.backward(loss / gradient_accumulation_steps)`,
  i.e. `Tensor.backward`, which the Doctor observes as in a plain loop, with the real value.
  `logging_nan_inf_filter` (on by default) replaces a NaN/Inf loss in the *logs* by the mean
  of the previous ones; the backward loss the Doctor records is the real one, so TD201 still
  reports it.
- Gradient accumulation and `max_grad_norm`: the optimizer's `step()` runs once per
  `gradient_accumulation_steps` micro-batches, after clipping; those are the Doctor's steps.
- `on_log`: `loss`, `grad_norm`, `learning_rate` (and any other number the user logs) go
  through `doc.log` under their HF names.
- Evaluation: `evaluation_loop` is wrapped on the trainer instance so that the Doctor knows a
  validation runs (what `doc.validating` tells it in a plain loop) and its metrics
  (`eval_loss`, `eval_<metric>`) are validation metrics; the modes the Trainer sets
  (`model.eval()`, then `model.train()` in the next `training_step`) are left alone.
- An exception in `training_step` or `evaluation_loop` closes the Doctor with that exception
  (the report says how the run ended) and is re-raised unchanged.

The callback finds its Trainer by looking up the call stack once, in `on_train_begin` (the
Trainer does not hand itself to callbacks). Zero-code mode, which knows the Trainer, calls
`attach_trainer(trainer, doctor=...)` instead.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback  # the real package (absolute import)

from .._patching import Patch, acquire, release
from .._source import relpath
from .._validate import reject_positional, reject_unknown, show
from ..doctor import Doctor as _Doctor
from ..errors import UsageError
from ..options import WATCH_OPTIONS, Options
from .accelerate import unwrap_model, unwrap_optimizer

_CALLER = "traindoctor.transformers.Doctor"
_OPTIONS = (*WATCH_OPTIONS, "doctor")

# Keys of the Trainer's logs that are bookkeeping, not measurements of the model.
_SKIP_SUFFIXES = ("_runtime", "_per_second", "_model_preparation_time", "_flos")
_OVERRIDABLE = ("compute_loss", "training_step", "prediction_step", "evaluation_loop")
_SKIP_KEYS = {"epoch", "step", "total_flos", "num_input_tokens_seen", "train_loss"}


class TraindoctorCallback(TrainerCallback):
    """A `TrainerCallback` that watches `Trainer.train()` with traindoctor.

    Options are those of `traindoctor.watch`. Pass `doctor=` to use a Doctor made elsewhere
    (zero-code mode): it is attached here but left open, its owner closes it.
    """

    def __init__(
        self,
        *args: Any,
        out_dir: str | Path = "traindoctor-runs",
        budget: float = 0.03,
        console: bool = True,
        select: Iterable[str] = (),
        ignore: Iterable[str] = (),
        doctor: _Doctor | None = None,
        export: Any = "auto",
        **unknown: Any,
    ) -> None:
        reject_positional(_CALLER, args, _OPTIONS)
        reject_unknown(_CALLER, unknown, _OPTIONS)
        if doctor is not None and not isinstance(doctor, _Doctor):
            raise UsageError(
                f"{_CALLER}(doctor=...) got {show(doctor)}; pass a traindoctor Doctor made "
                "elsewhere (zero-code mode), or leave it out"
            )
        self.options = Options.checked(
            _CALLER,
            out_dir=out_dir,
            budget=budget,
            console=console,
            select=select,
            ignore=ignore,
            export=export,
        )
        self.doctor: _Doctor | None = doctor
        self._owns_doctor = doctor is None
        self.trainer: Any = None
        self.report: Any = None
        self._patched: list[Patch] = []  # the trainer instance's methods we wrap (_patching.py)
        self._eval_prefixes: set[str] = set()

    # -- TrainerCallback events -----------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer is None:
            self.trainer = _find_trainer()
        if self._owns_doctor:
            self.doctor = _Doctor(
                options=self.options.but(mode="transformers"), framework="transformers"
            )
            self.report = None
        doc = self.doctor
        assert doc is not None
        model = kwargs.get("model") or getattr(self.trainer, "model", None)
        optimizer = kwargs.get("optimizer") or getattr(self.trainer, "optimizer", None)
        if model is None or optimizer is None:
            doc.timeline.event(doc.step, "integration_note", note="no model or optimizer given")
            return
        scaler = getattr(getattr(self.trainer, "accelerator", None), "scaler", None)
        if not doc.state.attached:
            doc.attach({"": unwrap_model(model)}, [unwrap_optimizer(optimizer)], scaler)
        doc.timeline.facts["transformers"] = _facts(args, self.trainer)
        if self.trainer is not None:
            doc.guard.call("transformers patch", self._patch, self.trainer)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
    ) -> None:
        doc = self.doctor
        if doc is None or doc.state.closed or not logs:
            return
        doc.guard.call("transformers log", self._log, logs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish(None)

    # -- the Trainer's own methods, wrapped on the instance -------------------------------
    def _patch(self, trainer: Any) -> None:
        callback = self

        def wrap(name: str, around: Any) -> None:
            patch = Patch(trainer, name, around)
            acquire(patch)
            self._patched.append(patch)

        def training_step(original: Any) -> Any:
            def step(*args: Any, **kwargs: Any) -> Any:
                try:
                    return original(*args, **kwargs)
                except BaseException as exc:
                    callback._finish(exc)
                    raise

            return step

        def evaluation_loop(original: Any) -> Any:
            def loop(*args: Any, **kwargs: Any) -> Any:
                prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
                try:
                    with callback._validation():
                        output = original(*args, **kwargs)
                        callback._log_eval(prefix, getattr(output, "metrics", None))
                except BaseException as exc:
                    callback._finish(exc)
                    raise
                return output

            return loop

        wrap("training_step", training_step)
        wrap("evaluation_loop", evaluation_loop)

    def _unpatch(self) -> None:
        for patch in reversed(self._patched):
            release(patch)  # exactly what the instance held before (or nothing), see _patching
        self._patched.clear()

    # -- what each event does -------------------------------------------------------------
    @contextlib.contextmanager
    def _validation(self) -> Iterator[None]:
        """What `doc.validating()` tells the Doctor, without its eval()/no_grad(): the Trainer
        sets the modes and the grad mode of its evaluation itself."""
        doc = self.doctor
        entered = False
        if doc is not None and not doc.state.closed:
            doc.guard.call("transformers validation", doc.begin_validation)
            entered = True
        try:
            yield
        finally:
            if entered:
                doc.end_validation()

    def _log(self, logs: dict[str, Any]) -> None:
        doc = self.doctor
        assert doc is not None
        if "train_runtime" in logs:
            return  # the end-of-training summary: averages of what was logged already
        values = {
            k: float(v)
            for k, v in logs.items()
            if _is_number(v)
            and k not in _SKIP_KEYS
            and not k.endswith(_SKIP_SUFFIXES)
            and not any(k.startswith(f"{p}_") for p in self._eval_prefixes)
        }
        loss = values.pop("loss", None)
        if loss is not None or values:
            doc.log(loss=loss, **values)

    def _log_eval(self, prefix: str, metrics: dict[str, Any] | None) -> None:
        doc = self.doctor
        if doc is None or doc.state.closed or not metrics:
            return
        self._eval_prefixes.add(prefix)
        values = {
            k: float(v)
            for k, v in metrics.items()
            if _is_number(v) and k not in _SKIP_KEYS and not k.endswith(_SKIP_SUFFIXES)
        }
        loss = values.pop(f"{prefix}_loss", None)
        if loss is not None or values:
            doc.guard.call("transformers log", lambda: doc.log(loss=loss, **values))

    def _finish(self, exc: BaseException | None) -> None:
        doc = self.doctor
        if self.trainer is not None and self._patched:
            self._unpatch()
        if doc is None or not self._owns_doctor or doc.report is not None:
            return
        self.report = doc.close(exc)


def attach_trainer(trainer: Any, doctor: _Doctor | None = None, **options: Any) -> Doctor:
    """Add a traindoctor callback to this Trainer (zero-code mode's entry point).

    With `doctor=`, that Doctor is attached when `train()` begins and left open for its owner
    to close; otherwise the callback makes and closes its own, with `options` as in `Doctor`.
    Returns the callback (its `.report` is set when training ends).
    """
    if not isinstance(trainer, Trainer):
        raise UsageError(
            f"traindoctor.transformers.attach_trainer() takes a transformers.Trainer, got "
            f"{show(trainer)}; pass the Trainer before calling trainer.train()"
        )
    callback = TraindoctorCallback(doctor=doctor, **options)
    callback.trainer = trainer
    trainer.add_callback(callback)
    return callback


def _find_trainer() -> Any:
    """The Trainer whose `train()` is running: the `self` of a Trainer method up the stack."""
    from .._source import library_self

    frame = sys._getframe(1)
    while frame is not None:
        obj = library_self(frame, ("transformers",))  # never a user frame's f_locals
        if isinstance(obj, Trainer):
            return obj
        frame = frame.f_back
    return None


def _facts(args: Any, trainer: Any) -> dict[str, Any]:
    """The TrainingArguments that decide what a step is, and the Trainer methods the user
    overrode (with their source lines): a finding whose line is `trainer.train()` was made in
    one of them, since backward() runs inside the Trainer."""
    keys = (
        "gradient_accumulation_steps",
        "max_grad_norm",
        "learning_rate",
        "logging_nan_inf_filter",
        "fp16",
        "bf16",
        "per_device_train_batch_size",
    )
    facts: dict[str, Any] = {k: getattr(args, k, None) for k in keys}
    overrides = {}
    for name in _OVERRIDABLE:
        fn = getattr(type(trainer), name, None) if trainer is not None else None
        if fn is not None and fn is not getattr(Trainer, name, None):
            code = getattr(fn, "__code__", None)
            if code is not None:
                overrides[name] = f"{relpath(code.co_filename)}:{code.co_firstlineno}"
    facts["overrides"] = overrides
    return facts


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, int | float)


# The former name, kept for code and docs that import it (deprecated: it is a callback).
Doctor = TraindoctorCallback

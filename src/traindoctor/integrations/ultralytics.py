"""Ultralytics YOLO: callbacks that run a traindoctor Doctor over `model.train()`.

    model = YOLO("yolo11n.yaml")
    traindoctor.ultralytics.attach(model)      # the one line
    model.train(data="data.yaml", epochs=3)

What the trainer does and how the Doctor sees it:
- `on_pretrain_routine_end`: the trainer has built its model, optimizer, GradScaler, EMA and
  validator; the Doctor attaches to `trainer.model` (parameter names are Ultralytics' own,
  `model.22.cv3.0.2.weight`, the `model.<i>` that `freeze=` counts), `trainer.optimizer` and
  the GradScaler when it is enabled (`amp=True` on a GPU).
- Steps: the trainer calls `scaler.scale(loss).backward()` every batch and its own
  `optimizer_step()` (unscale_, clip at 10, `scaler.step`, `update`, `zero_grad`, EMA update)
  once `accumulate = nbs / batch` batches have passed: those are the Doctor's steps, seen
  through torch's step hooks (Ultralytics has no callback for them).
- Loss parts: the criterion returns the (box, cls, dfl) vector, gains (`box=`, `cls=`, `dfl=`)
  applied, times the batch size; the trainer back-propagates its sum. A forward hook on the
  model reads that vector before backward and logs each element, with its graph, under the
  criterion's names (`box_loss`, `cls_loss`, `dfl_loss`): TD208 compares their shares of value
  and of gradient.
- Validation: each run of a validator (`on_val_start` .. the end of the epoch) is a validation
  for the Doctor, of the model the validator actually evaluates (the EMA, `trainer.ema.ema`,
  during training; the model a callback's `model.val()` evaluates), found in the validator's
  own frame. Ultralytics' modes and `inference_mode` are left as they are.
- Metrics: at `on_fit_epoch_end`, after every other callback of that event, the numbers in
  `trainer.metrics` (`metrics/mAP50(B)`, `val/box_loss`, ... and whatever a callback put
  there) are logged under their Ultralytics names; the summed `val/*_loss` is the validation
  loss. A validation a callback starts logs the validator's results as `callback_val/<name>`.
  The final validation of `best.pt` (a checkpoint, not the trained model) is recorded as a
  fact of the report, not as a validation of the run.
- Facts, not verdicts: the trainer args, the user's callbacks (and the line of one that writes
  a metric), the validations run with the validator's counts, and whether `YOLO.model` is the
  trained model go to `timeline.facts["ultralytics"]`; TD111, TD208, TD401, TD402, TD404 and
  TD405 word their findings from them (rules/*/_ultralytics*.py).
- The Doctor is closed at `on_train_end` (after the final validation); an exception in
  training closes it with that exception (the report names it) and is re-raised unchanged.

Nothing here imports ultralytics: the trainer, validator and EMA are read by attribute.
Distributed (DDP) training runs in subprocesses that do not carry user callbacks: not watched.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .. import _mode_patches
from .._hooks import CopySafeHook
from .._patching import Patch, acquire, release
from .._source import library_self
from ..doctor import Doctor as _Doctor
from ..options import Options
from ..rules._ultralytics import CALLBACK_VAL
from .accelerate import unwrap_model

EVENTS = (
    "on_pretrain_routine_start",
    "on_pretrain_routine_end",
    "on_train_epoch_start",
    "on_val_start",
    "on_val_batch_end",
    "on_val_end",
    "on_fit_epoch_end",
    "on_train_end",
    "teardown",
)
# Trainer args that decide what a step is, what the loss weighs and what is validated.
_ARGS = (
    "epochs",
    "batch",
    "nbs",
    "imgsz",
    "optimizer",
    "lr0",
    "lrf",
    "warmup_epochs",
    "amp",
    "box",
    "cls",
    "dfl",
    "freeze",
    "val",
    "plots",
    "workers",
    "device",
)
# doc.log() keyword names that cannot be metric names.
_RESERVED = {"loss": "loss_logged", "parts": "parts_logged"}


class UltralyticsCallbacks:
    """traindoctor's callbacks for an Ultralytics model or trainer.

    `UltralyticsCallbacks(...).add_to(model)` (or `attach(model)`) registers them; options
    are those of `traindoctor.watch` (out_dir, budget, console, select, ignore). After training,
    `.report` holds the Report. Pass `doctor=` to use a Doctor made elsewhere (zero-code
    mode): it is attached here but left open, its owner closes it.
    """

    def __init__(
        self,
        *,
        out_dir: str | Path = "traindoctor-runs",
        budget: float = 0.03,
        console: bool = True,
        select: Iterable[str] = (),
        ignore: Iterable[str] = (),
        doctor: _Doctor | None = None,
    ) -> None:
        self.options = Options.checked(
            "Doctor", out_dir=out_dir, budget=budget, console=console, select=select, ignore=ignore
        )
        self.doctor: _Doctor | None = doctor
        self._owns_doctor = doctor is None
        self.report: Any = None
        self.trainer: Any = None
        self._patched: list[Patch] = []  # trainer methods wrapped on the instance
        self._hook: Any = None  # the forward hook that reads the loss parts
        self._open: list[str] = []  # validations in progress: "train" | "callback"
        self._final = False  # inside trainer.final_eval()
        self._loss_names: tuple[str, ...] = ()
        self._val_facts: list[dict[str, Any]] = []  # facts["ultralytics"]["validations"]
        self._searched: set[str] = set()  # metric names whose writing line was looked for
        self._counts: dict[str, int] = {}
        self._yolo: Any = None  # the YOLO object the callbacks were added to, if any
        self._regions: _UserRegions | None = None
        self.callbacks: dict[str, Callable[[Any], None]] = {
            name: getattr(self, f"_{name}") for name in EVENTS
        }

    def add_to(self, target: Any) -> UltralyticsCallbacks:
        """Register the callbacks on a `YOLO` model (before `model.train()`) or a trainer."""
        add = getattr(target, "add_callback", None)
        if not callable(add):
            raise TypeError(
                "traindoctor.ultralytics.attach() takes an ultralytics YOLO model or trainer "
                f"(something with add_callback), got {type(target).__name__}"
            )
        for event, fn in self.callbacks.items():
            add(event, fn)
        if hasattr(target, "_setup_train"):  # a trainer: its routine may not have started
            self._use_trainer(target)
            # The YOLO whose train() made this trainer (zero-code mode): a callback's
            # `model.val()` builds its validator with the YOLO's callbacks, not the trainer's.
            yolo = _training_yolo(target)
            if yolo is not None:
                self._yolo = yolo
                for event in ("on_val_start", "on_val_batch_end", "on_val_end"):
                    yolo.add_callback(event, self.callbacks[event])
        elif isinstance(getattr(target, "model", None), torch.nn.Module):
            self._yolo = target
        return self

    # -- trainer lifecycle -----------------------------------------------------------------
    def _on_pretrain_routine_start(self, trainer: Any) -> None:
        self._guarded("ultralytics setup", self._use_trainer, trainer)

    def _use_trainer(self, trainer: Any) -> None:
        if self.trainer is trainer:
            return
        self.trainer = trainer
        self.report = None
        self._open, self._val_facts, self._final = [], [], False
        if self._owns_doctor:
            self._wrap(trainer, "_do_train", self._closing_on_error)
        self._wrap(trainer, "final_eval", self._marking_final)

    def _on_pretrain_routine_end(self, trainer: Any) -> None:
        if int(os.getenv("RANK", "-1")) not in (-1, 0):
            return  # one report per run: rank 0 watches
        try:
            self._attach(trainer)
        except Exception as exc:  # noqa: BLE001  (never stop the user's training)
            print(f"traindoctor: could not attach to Ultralytics: {exc!r}", file=sys.stderr)

    def _attach(self, trainer: Any) -> None:
        self._use_trainer(trainer)
        if self._owns_doctor:
            self.doctor = _Doctor(
                options=self.options.but(mode="ultralytics"), framework="ultralytics"
            )
        doc = self.doctor
        if doc is None or doc.state.attached:
            return
        model = unwrap_model(trainer.model)
        optimizer = trainer.optimizer
        if not isinstance(model, torch.nn.Module) or not isinstance(
            optimizer, torch.optim.Optimizer
        ):
            doc.timeline.event(doc.step, "integration_note", note="no model or optimizer")
            return
        scaler = getattr(trainer, "scaler", None)
        enabled = getattr(scaler, "is_enabled", None)
        if not callable(enabled) or not enabled():
            scaler = None  # GradScaler(enabled=False): amp is off, nothing is scaled
        doc.framework = "ultralytics"
        doc.timeline.facts["framework"] = "ultralytics"
        doc.attach({"": model}, [optimizer], scaler)
        facts = doc.timeline.facts["ultralytics"] = _facts(trainer)
        facts["validations"] = self._val_facts  # appended to as validations run
        if self._yolo is not None:
            # A YOLO built from a yaml keeps its own model; the trainer trains a new one.
            facts["yolo_model_is_trained_model"] = unwrap_model(self._yolo.model) is model
        self._hook = model.register_forward_hook(CopySafeHook(self._on_model_output))
        modes = doc.probe("modes")
        if modes is not None:
            self._regions = _UserRegions(doc, modes)
            _mode_patches.add_region_listener(self._regions)
        # Metrics are read after every other on_fit_epoch_end callback: numbers a callback
        # puts in trainer.metrics for the loggers are read too.
        for event in ("on_fit_epoch_end",):
            handlers = trainer.callbacks.get(event, [])
            mine = [h for h in handlers if getattr(h, "__self__", None) is self]
            trainer.callbacks[event] = [h for h in handlers if h not in mine] + mine

    def _on_train_epoch_start(self, trainer: Any) -> None:
        doc = self._live()
        if doc is not None:
            doc.timeline.event(doc.step, "ultralytics_epoch", epoch=int(trainer.epoch) + 1)

    def _on_train_end(self, trainer: Any) -> None:
        self._finish(None)

    def _teardown(self, trainer: Any) -> None:
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._regions is not None:
            _mode_patches.remove_region_listener(self._regions)
            self._regions = None
        for patch in reversed(self._patched):
            release(patch)  # exactly what the instance held before (or nothing), see _patching
        self._patched.clear()
        doc = self.doctor
        if doc is None or not self._owns_doctor or doc.report is not None:
            return
        doc.timeline.facts.setdefault("ultralytics", {})["validations"] = self._val_facts
        self.report = doc.close(exc)

    # -- the trainer's own methods, wrapped on the instance --------------------------------
    def _wrap(self, trainer: Any, name: str, around: Callable[[Any], Any]) -> None:
        if any(p.attribute == name for p in self._patched):
            return
        if not callable(getattr(trainer, name, None)):
            return
        patch = Patch(trainer, name, around)
        acquire(patch)
        self._patched.append(patch)

    def _closing_on_error(self, original: Any) -> Any:
        def do_train(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                self._finish(exc)
                raise

        return do_train

    def _marking_final(self, original: Any) -> Any:
        def final_eval(*args: Any, **kwargs: Any) -> Any:
            self._final = True
            try:
                return original(*args, **kwargs)
            finally:
                self._final = False

        return final_eval

    # -- loss parts -------------------------------------------------------------------------
    def _on_model_output(self, module: Any, args: Any, output: Any) -> None:
        # The training call is model(batch_dict) -> (loss vector with graph, {name: detached}).
        if not torch.is_grad_enabled() or not isinstance(output, tuple) or len(output) != 2:
            return
        vector, items = output
        if not (
            isinstance(vector, torch.Tensor)
            and vector.requires_grad
            and vector.dim() == 1
            and isinstance(items, dict)
            and len(items) == vector.numel() > 1
        ):
            return
        doc = self._live()
        if doc is None or doc.state.validating:
            return
        names = tuple(str(k) for k in items)
        self._loss_names = names
        doc.guard.call(
            "ultralytics loss parts",
            lambda: doc.log(parts=dict(zip(names, vector.unbind(0)))),
        )

    # -- validation -------------------------------------------------------------------------
    def _on_val_start(self, validator: Any) -> None:
        doc = self._live()
        if doc is None or self._final:
            return
        kind = "train" if getattr(validator, "training", False) else "callback"
        model = _evaluated_model(validator)
        doc.guard.call("ultralytics validation", doc.begin_validation, model)
        self._open.append(kind)
        self._counts = {}

    def _on_val_batch_end(self, validator: Any) -> None:
        if self._live() is not None:
            self.doctor.guard.call("ultralytics validation", self._count, validator)

    def _count(self, validator: Any) -> None:
        """Targets, predictions (after NMS, above `conf`) and true positives at IoU 0.5 that
        the validator has collected so far (its stats are cleared before on_val_end)."""
        stats = getattr(getattr(validator, "metrics", None), "stats", None)
        if not isinstance(stats, dict):
            return
        self._counts = {
            "targets": sum(len(t) for t in stats.get("target_cls", ())),
            "predictions": sum(len(c) for c in stats.get("conf", ())),
            "true_positives_iou50": int(sum(t[:, 0].sum() for t in stats.get("tp", ()) if len(t))),
        }

    def _on_val_end(self, validator: Any) -> None:
        doc = self._live()
        if doc is None:
            return
        doc.guard.call("ultralytics validation", self._note_validator, validator)
        if self._final:
            return
        if self._open and self._open[-1] == "callback":
            self._open.pop()
            results = getattr(getattr(validator, "metrics", None), "results_dict", None)
            values = _numbers(results or {}, prefix=CALLBACK_VAL)
            if values:
                doc.guard.call("ultralytics metrics", lambda: doc.log(**values))
            doc.end_validation()
        # A training validation stays open until on_fit_epoch_end, where its metrics are.

    def _note_validator(self, validator: Any) -> None:
        """What the validator itself filled in: metrics are computed from these."""
        cm = getattr(getattr(validator, "confusion_matrix", None), "matrix", None)
        args = getattr(validator, "args", None)
        doc = self.doctor
        assert doc is not None
        self._val_facts.append(
            {
                "step": doc.step,
                "kind": "final" if self._final else (self._open[-1] if self._open else "?"),
                "epoch": int(getattr(self.trainer, "epoch", -1)) + 1,
                "confusion_matrix_sum": float(cm.sum()) if cm is not None else None,
                "plots": bool(getattr(args, "plots", False)),
                "conf": getattr(args, "conf", None),
                "images": int(getattr(validator, "seen", 0) or 0),
                **self._counts,
            }
        )
        facts = doc.timeline.facts.get("ultralytics")
        if facts is not None:  # recorded at attach; the list may have been renewed since
            facts["validations"] = self._val_facts

    def _on_fit_epoch_end(self, trainer: Any) -> None:
        doc = self._live()
        if doc is None:
            return
        if self._final:
            metrics = _numbers(getattr(trainer, "metrics", None) or {})
            doc.timeline.facts.setdefault("ultralytics", {})["final_validation"] = metrics
            return
        if "train" not in self._open:
            return  # no validation this epoch (val=False): trainer.metrics is last epoch's
        try:
            doc.guard.call("ultralytics metrics", self._log_metrics, doc, trainer.metrics)
        finally:
            self._open.remove("train")
            doc.end_validation()

    def _log_metrics(self, doc: _Doctor, metrics: dict[str, Any]) -> None:
        values = _numbers(metrics)
        self._note_metric_lines(doc, values)
        losses = [v for k, v in values.items() if k.startswith("val/") and k.endswith("_loss")]
        doc.log(loss=sum(losses) if losses else None, **values)

    def _note_metric_lines(self, doc: _Doctor, values: dict[str, float]) -> None:
        """The user's line that puts each metric no validator computed in `trainer.metrics`
        (TD404 points at it), searched once per name in the `on_fit_epoch_end` callbacks."""
        facts = doc.timeline.facts.get("ultralytics")
        new = [k for k in values if not k.startswith("metrics/") and k not in self._searched]
        if facts is None or not new:
            return
        callbacks = _user_callbacks(self.trainer, "on_fit_epoch_end")
        lines = facts.setdefault("metric_lines", {})
        for key in new:
            self._searched.add(key)
            line = _line_writing(callbacks, key)
            if line:
                lines[key] = line

    # -- helpers ----------------------------------------------------------------------------
    def _live(self) -> _Doctor | None:
        doc = self.doctor
        if doc is None or doc.state.closed or not doc.state.attached:
            return None
        return doc

    def _guarded(self, where: str, fn: Callable[..., Any], *args: Any) -> None:
        doc = self.doctor
        if doc is not None:
            doc.guard.call(where, fn, *args)
            return
        with contextlib.suppress(Exception):
            fn(*args)


class _UserRegions:
    """`torch.inference_mode()` regions written in the user's own code (a callback): their
    params are checked for inference tensors when the region exits, even when no forward ran
    in it (a `fuse()` alone replaces weights), so TD401 names the region's line. Regions of
    Ultralytics itself are the modes probe's (checked when the trained model ran in them)."""

    def __init__(self, doc: _Doctor, modes: Any) -> None:
        self.doc, self.modes = doc, modes
        self._user = False

    def region_enter(self) -> None:
        self._user = _entered_by_user()

    def region_exit(self) -> None:
        doc = self.doc
        if self._user and not doc.state.closed:
            self._user = False
            # The modes probe recorded this region's line when it was entered.
            doc.guard.call("probe modes", self.modes.scan_inference, doc.step, doc.rec, "region")


def _entered_by_user() -> bool:
    """Whether the code entering the region is the user's (not torch, traindoctor, a library)."""
    from .._source import PKG_DIR, TORCH_DIR, is_user_file

    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith((PKG_DIR, TORCH_DIR)):
            return is_user_file(filename)
        frame = frame.f_back
    return False


def attach(target: Any, **options: Any) -> UltralyticsCallbacks:
    """Add traindoctor's callbacks to a `YOLO` model (call it before `model.train()`) or to a
    trainer. Options as in `traindoctor.watch`. Returns the callbacks' owner: `.report` holds
    the report when training ends."""
    return UltralyticsCallbacks(**options).add_to(target)


# The former name, kept for code that imports it (deprecated: it is no Doctor).
Doctor = UltralyticsCallbacks


def ultralytics_trainer(frame: Any) -> Any:
    """An Ultralytics trainer (`BaseTrainer` or a subclass) that is `self` in this frame."""
    obj = library_self(frame, ("ultralytics",))  # never a user frame's f_locals
    if obj is None:
        return None
    for cls in type(obj).__mro__:
        if cls.__name__ == "BaseTrainer" and cls.__module__.startswith("ultralytics."):
            return obj
    return None


# -- reading Ultralytics objects ------------------------------------------------------------
def _evaluated_model(validator: Any) -> torch.nn.Module | None:
    """The model this validator is running: a local of its `__call__` (the EMA during
    training, an AutoBackend around a copy in `model.val()`)."""
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        if library_self(frame, ("ultralytics",)) is validator:
            model = frame.f_locals.get("model")
            if isinstance(model, torch.nn.Module):
                if next(model.parameters(), None) is None:
                    # AutoBackend keeps the PyTorch model outside its module tree.
                    inner = getattr(getattr(model, "backend", None), "model", None)
                    model = inner if isinstance(inner, torch.nn.Module) else model
                return model
        frame = frame.f_back
    return None


def _numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = float(v)
        if isinstance(v, int | float):
            name = f"{prefix}{k}"
            out[_RESERVED.get(name, name)] = float(v)
    return out


def _facts(trainer: Any) -> dict[str, Any]:
    args = getattr(trainer, "args", None)
    facts: dict[str, Any] = {
        "args": {k: _plain(getattr(args, k, None)) for k in _ARGS},
        "accumulate": getattr(trainer, "accumulate", None),
        "trainer": type(trainer).__name__,
        "ema": type(getattr(trainer, "ema", None)).__name__,
    }
    with contextlib.suppress(Exception):
        import importlib.metadata

        facts["version"] = importlib.metadata.version("ultralytics")
    callbacks = {}
    for event, handlers in (getattr(trainer, "callbacks", None) or {}).items():
        mine = [_callback_source(h) for h in handlers]
        mine = [s for s in mine if s]
        if mine:
            callbacks[event] = mine
    facts["user_callbacks"] = callbacks
    return facts


def _training_yolo(trainer: Any) -> Any:
    """The ultralytics `Model` (YOLO) up the stack whose `train()` runs this trainer."""
    frame = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            return None
        obj = library_self(frame, ("ultralytics",))
        is_model = obj is not None and any(
            c.__name__ == "Model" and c.__module__.startswith("ultralytics.")
            for c in type(obj).__mro__
        )
        if is_model and getattr(obj, "__dict__", {}).get("trainer") is trainer:
            return obj
        frame = frame.f_back
    return None


def _user_callbacks(trainer: Any, event: str) -> list[Any]:
    return [
        h for h in (getattr(trainer, "callbacks", None) or {}).get(event, []) if _callback_source(h)
    ]


def _line_writing(callbacks: list[Any], key: str) -> str | None:
    """`path:line` of the line of one of these callbacks that names `key` (the one that puts
    that metric in trainer.metrics), read from their source."""
    import inspect

    from .._source import relpath

    for fn in callbacks:
        target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
        try:
            lines, start = inspect.getsourcelines(target)
            path = inspect.getsourcefile(target)
        except (OSError, TypeError):
            continue
        for i, line in enumerate(lines):
            if f'"{key}"' in line or f"'{key}'" in line:
                return f"{relpath(path)}:{start + i}" if path else None
    return None


def _callback_source(fn: Any) -> str | None:
    """`name (path:line)` of a callback the user wrote (not Ultralytics', not ours)."""
    from .._source import is_user_file, relpath

    code = getattr(fn, "__code__", None) or getattr(type(fn).__call__, "__code__", None)
    if code is None or not is_user_file(code.co_filename):
        return None
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{name} ({relpath(code.co_filename)}:{code.co_firstlineno})"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)

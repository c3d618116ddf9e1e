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
- Findings speak Ultralytics: `_speak` adds to TD208, TD111, TD401, TD402, TD404 and TD405 the
  trainer args, callbacks and validator facts that explain them.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import _mode_patches
from .._hooks import CopySafeHook
from ..doctor import Doctor as _Doctor
from ..findings import Finding, Severity
from . import doctor_options
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
CALLBACK_VAL = "callback_val/"


class Doctor:
    """traindoctor's callbacks for an Ultralytics model or trainer.

    `Doctor(...).add_to(model)` (or `attach(model)`) registers them; options are those of
    `traindoctor.watch` (out_dir, budget, console, select, ignore). After training,
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
        self.options = doctor_options(out_dir, budget, console, select, ignore)
        self.doctor: _Doctor | None = doctor
        self._owns_doctor = doctor is None
        self.report: Any = None
        self.trainer: Any = None
        self._patched: list[str] = []  # trainer attributes wrapped on the instance
        self._hook: Any = None  # the forward hook that reads the loss parts
        self._open: list[str] = []  # validations in progress: "train" | "callback"
        self._final = False  # inside trainer.final_eval()
        self._loss_names: tuple[str, ...] = ()
        self._val_facts: list[dict[str, Any]] = []
        self._counts: dict[str, int] = {}
        self._yolo: Any = None  # the YOLO object the callbacks were added to, if any
        self._regions: _UserRegions | None = None
        self.callbacks: dict[str, Callable[[Any], None]] = {
            name: getattr(self, f"_{name}") for name in EVENTS
        }

    def add_to(self, target: Any) -> Doctor:
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
            self.doctor = _Doctor(mode="ultralytics", framework="ultralytics", **self.options)
        doc = self.doctor
        if doc is None or doc._ctx is not None:
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
        if self._yolo is not None:
            # A YOLO built from a yaml keeps its own model; the trainer trains a new one.
            facts["yolo_model_is_trained_model"] = unwrap_model(self._yolo.model) is model
        self._hook = model.register_forward_hook(CopySafeHook(self._on_model_output))
        modes = doc._probe("modes")
        if modes is not None:
            self._regions = _UserRegions(doc, modes)
            _mode_patches.add_region_listener(self._regions)
        _speak(doc, self)
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
        trainer = self.trainer
        for name in self._patched:
            trainer.__dict__.pop(name, None)
        self._patched.clear()
        doc = self.doctor
        if doc is None or not self._owns_doctor or doc.report is not None:
            return
        doc.timeline.facts.setdefault("ultralytics", {})["validations"] = self._val_facts
        self.report = doc.close(exc)

    # -- the trainer's own methods, wrapped on the instance --------------------------------
    def _wrap(self, trainer: Any, name: str, around: Callable[[Any], Any]) -> None:
        if name in self._patched or not callable(getattr(trainer, name, None)):
            return
        setattr(trainer, name, around(getattr(trainer, name)))
        self._patched.append(name)

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
        if doc is None or doc._validating:
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
        losses = [v for k, v in values.items() if k.startswith("val/") and k.endswith("_loss")]
        doc.log(loss=sum(losses) if losses else None, **values)

    # -- helpers ----------------------------------------------------------------------------
    def _val_kinds(self) -> list[str]:
        return [str(v.get("kind")) for v in self._val_facts]

    def _live(self) -> _Doctor | None:
        doc = self.doctor
        if doc is None or doc._closed or doc._ctx is None:
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
        if self._user and not doc._closed:
            self._user = False
            # The modes probe recorded this region's line when it was entered.
            doc.guard.call("probe modes", self.modes._scan_inference, doc.step, doc.rec, "region")


def _entered_by_user() -> bool:
    """Whether the code entering the region is the user's (not torch, traindoctor, a library)."""
    from .._source import _PKG_DIR, _TORCH_DIR, is_user_file

    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith((_PKG_DIR, _TORCH_DIR)):
            return is_user_file(filename)
        frame = frame.f_back
    return False


def attach(target: Any, **options: Any) -> Doctor:
    """Add traindoctor's callbacks to a `YOLO` model (call it before `model.train()`) or to a
    trainer. Options as in `traindoctor.watch`. Returns the callbacks' owner: `.report` holds
    the report when training ends."""
    return Doctor(**options).add_to(target)


def ultralytics_trainer(frame: Any) -> Any:
    """An Ultralytics trainer (`BaseTrainer` or a subclass) that is `self` in this frame."""
    obj = frame.f_locals.get("self")
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
        if frame.f_locals.get("self") is validator:
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
        obj = frame.f_locals.get("self")
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


# -- findings in Ultralytics' words --------------------------------------------------------
def _speak(doc: _Doctor, owner: Doctor) -> None:
    """Rewrite findings with the trainer's args and callbacks after each diagnosis (the rules
    know torch, not Ultralytics). Only cause/fix/evidence change, never what is found."""
    diagnose = doc.diagnose

    def diagnose_in_ultralytics_terms() -> list[Finding]:
        findings = diagnose()
        facts = doc.timeline.facts.get("ultralytics") or {}
        doc.findings = [_translate(f, facts, owner) for f in findings]
        return doc.findings

    doc.diagnose = diagnose_in_ultralytics_terms  # type: ignore[method-assign]


def _inference_tensors_seen(owner: Doctor) -> bool:
    doc = owner.doctor
    return doc is not None and bool(doc.timeline.events("inference_tensors"))


def _metric_stuck(f: Finding, facts: dict[str, Any], owner: Doctor) -> Finding:
    """TD404 on Ultralytics metrics: what the validator measured (its own metrics), which
    validation computed them (a callback's), or that a callback wrote them (not measured)."""
    names = list((f.evidence or {}).get("metrics") or {})
    own = [m for m in names if m.startswith("metrics/")]
    by_callback = [m for m in names if m.startswith(CALLBACK_VAL)]
    added = [m for m in names if m not in own and m not in by_callback]
    kinds = [("train", own), ("callback", by_callback)]
    parts, evidence = [], {}
    for kind, metrics in kinds:
        vals = [v for v in owner._val_facts if v.get("kind") == kind]
        if not metrics or not vals:
            continue
        who = "Ultralytics' validator" if kind == "train" else "the validation your callback ran"
        preds = [v.get("predictions") for v in vals]
        tps = [v.get("true_positives_iou50") for v in vals]
        targets = [v.get("targets") for v in vals]
        text = f"{_names(metrics)} were computed by {who} from its predictions"
        if all(t == 0 for t in targets):
            text += ": the validation images hold no labelled object at all"
        elif all(p == 0 for p in preds):
            text += (
                f": it made no prediction above conf={vals[-1].get('conf')} in any of these "
                f"{len(vals)} validations ({targets[-1]} targets): every class score is below "
                "the threshold (a model trained from scratch starts near 4e-4, the Detect "
                "head's prior, and needs more epochs or a higher lr0)"
            )
        elif all(t == 0 for t in tps if t is not None):
            text += (
                f": it predicted boxes ({preds}) but none overlaps a target at IoU 0.5: the "
                "boxes are not learned yet, or the labels do not match the images (YOLO "
                "labels are `class x_center y_center width height`, normalized to 0-1)"
            )
        parts.append(text + ".")
        evidence[f"ultralytics_{kind}_validations"] = [
            {
                k: v.get(k)
                for k in ("epoch", "images", "targets", "predictions", "true_positives_iou50")
            }
            for v in vals
        ]
    where = f.where
    fix = f.fix
    cause = f.cause if added else ""
    vals = [v for v in owner._val_facts if v.get("kind") == "train"]
    if added:
        cms = [v.get("confusion_matrix_sum") for v in vals]
        cbs = facts.get("user_callbacks", {}).get("on_fit_epoch_end") or []
        written = _line_writing(_user_callbacks(owner.trainer, "on_fit_epoch_end"), added[0])
        it = "it" if len(added) == 1 else "them"
        text = (
            f"{_names(added)} {'is' if len(added) == 1 else 'are'} not computed by the "
            f"validator: an `on_fit_epoch_end` callback puts {it} in `trainer.metrics`"
        )
        if written:
            text += f" ({written})"
            where = replace(where, source=written)
        elif cbs:
            text += f" (yours: {', '.join(cbs)})"
            where = replace(where, source=cbs[0].rsplit("(", 1)[-1].rstrip(")"))
        if vals and all(c == 0 for c in cms):
            text += (
                f"; the validator's confusion matrix summed to 0 after each of these "
                f"{len(vals)} validations (`plots={vals[-1].get('plots')}`): Ultralytics fills "
                "it only when `plots=True`, and during training only in the final epoch"
            )
            evidence["ultralytics_confusion_matrix_sum"] = cms
        parts.insert(0, text + ".")
        fix = (
            "Read the validator's results where Ultralytics puts them: `trainer.metrics` "
            "(`metrics/mAP50(B)`, `metrics/precision(B)`, ...) or "
            "`trainer.validator.metrics.results_dict`, at `on_fit_epoch_end`."
        )
    elif by_callback:
        fix = (
            "Check which model the callback validates (TD405): during training validate the "
            "trained one, or read `trainer.metrics`, which Ultralytics fills after each epoch."
        )
    elif own:
        fix = (
            "Train longer or with more data before judging mAP, or raise `lr0`; if it stays 0, "
            "check the labels against the images."
        )
    if not parts:
        return f
    body = " ".join(parts)
    if cause and body not in cause:
        cause = f"{cause.rstrip('.')}. {body}"
    cause = cause or body
    severity = f.severity
    zeros = all(v == 0 for v in ((f.evidence or {}).get("metrics") or {}).values())
    if own and not added and not by_callback and zeros and _validator_counts_explain_zero(vals):
        # The validator's own counts make 0 the true mAP (no prediction over conf, or none at
        # IoU 0.5): the metric is measured right; a model trained from scratch is not there yet.
        severity = Severity.INFO
    return replace(
        f,
        severity=severity,
        cause=cause,
        fix=fix,
        where=where,
        evidence={**f.evidence, **evidence},
    )


def _validator_counts_explain_zero(vals: list[dict[str, Any]]) -> bool:
    if not vals:
        return False
    return all(
        v.get("targets") == 0 or v.get("predictions") == 0 or v.get("true_positives_iou50") == 0
        for v in vals
    )


def _names(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _callbacks_text(facts: dict[str, Any], events: tuple[str, ...]) -> str:
    found = [
        f"`{e}`: {', '.join(facts.get('user_callbacks', {}).get(e, []))}"
        for e in events
        if facts.get("user_callbacks", {}).get(e)
    ]
    return "; ".join(found)


def _translate(f: Finding, facts: dict[str, Any], owner: Doctor) -> Finding:
    args = facts.get("args") or {}
    note = ""
    fix = ""
    evidence: dict[str, Any] = {}
    if f.code == "TD208":
        dominant = (f.evidence or {}).get("dominant", "")
        gain = dominant.removesuffix("_loss")
        if gain in ("box", "cls", "dfl"):
            gains = ", ".join(f"`{g}={args.get(g)}`" for g in ("box", "cls", "dfl"))
            note = (
                f" Ultralytics multiplies each part by its gain before the sum it "
                f"back-propagates: here {gains}."
            )
            fix = (
                f"Lower the `{gain}` gain in `model.train({gain}=...)` (or the data/cfg yaml) "
                "until the gradient shares are comparable; the defaults are box=7.5, cls=0.5, "
                "dfl=1.5."
            )
            evidence = {"ultralytics_gains": {g: args.get(g) for g in ("box", "cls", "dfl")}}
    elif f.code == "TD402":
        cbs = _callbacks_text(
            facts, ("on_train_epoch_start", "on_train_batch_start", "on_train_batch_end")
        )
        note = (
            " Ultralytics puts the model in train mode only at the start of each epoch "
            "(`trainer._model_train()`): a callback that calls `.eval()` during an epoch leaves "
            "it in eval mode until the next one."
            + (f" Your training callbacks: {cbs}." if cbs else "")
        )
        fix = (
            "Restore the mode in the same callback (`was = m.training; m.eval(); ...; "
            "m.train(was)`), or evaluate a copy (`trainer.ema.ema` is one, kept up to date)."
        )
    elif f.code == "TD401" or (f.code == "TD111" and _inference_tensors_seen(owner)):
        cbs = _callbacks_text(facts, ("on_fit_epoch_end", "on_train_epoch_end", "on_val_end"))
        note = (
            " Ultralytics' training validation evaluates the EMA (`trainer.ema.ema`), never "
            "`trainer.model`; work done under `torch.inference_mode()` on `trainer.model` "
            "itself (a `fuse()`, as AutoBackend did to the model it was given before it worked "
            "on a copy, a `.half()`, rebuilt layers) gives it inference tensors that the "
            "optimizer does not hold." + (f" Your callbacks: {cbs}." if cbs else "")
        )
        fix = (
            "In the callback, validate `trainer.ema.ema` or a `copy.deepcopy(trainer.model)`, "
            "or call `trainer.validator(trainer)`; never fuse or cast `trainer.model`."
        )
    elif f.code == "TD404":
        return _metric_stuck(f, facts, owner)
    elif f.code == "TD405" and "callback" in owner._val_kinds():
        if facts.get("yolo_model_is_trained_model") is False:
            note = (
                " It is the model a callback's validation evaluates (`model.val()` validates a "
                "copy of `YOLO.model`), and `YOLO.model` is not the model the trainer trains: "
                "a `YOLO(...)` built from a yaml keeps its own, untrained model, and "
                "`model.train()` builds and trains a new one, so the callback validates the "
                "untrained model until training ends."
            )
        fix = (
            "In the callback, read what Ultralytics validated (`trainer.metrics`, "
            "`trainer.validator.metrics`) or validate what is trained: `trainer.validator(trainer)` "
            "(the EMA) or `trainer.model` (`model.val()` is right only after training)."
        )
    if not note and not fix and not evidence:
        return f
    cause = f.cause if note in f.cause else f.cause + note
    new_fix = f.fix if not fix or fix in f.fix else f"{fix} ({f.fix})"
    return replace(f, cause=cause, fix=new_fix, evidence={**(f.evidence or {}), **evidence})

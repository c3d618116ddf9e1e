"""Lightning integration: a Callback that attaches a traindoctor Doctor to `Trainer.fit`.

`Trainer(callbacks=[traindoctor.lightning.TraindoctorCallback()])` is the one line. Lightning is imported
only when the callback class is built (`callback_class()`), never by `import traindoctor`.

What Lightning changes, and how it is handled here:
- Every optimizer step goes through the precision plugin, which calls the torch optimizer's
  `step(closure=...)` with a closure that runs `training_step`, `zero_grad` and `backward`
  *inside* `step()`; torch's step pre-hooks therefore fire before the gradients exist. With a
  closure, the Doctor's pre-step work is deferred to `on_before_optimizer_step`, which the
  precision plugin calls after the closure (after backward, before clipping and the update).
  With a GradScaler (`precision="16-mixed"`) the closure runs before `scaler.step()`, which
  calls `step()` without a closure: nothing is deferred. Accumulation micro-batches never call
  `step()` (Lightning runs the closure alone), so they count as backward passes of one step.
- Lightning's validation loop switches modes itself (`on_validation_model_eval` / `_train`) and
  runs under `torch.inference_mode`: the callback only tells the Doctor that a validation is
  running (no `eval()`, no `no_grad` of its own), so TD403/TD405 see validations without the
  callback changing what Lightning does.
- Metrics logged with `self.log` are read from `trainer.callback_metrics` (values that changed
  since the last read only), under their Lightning names.

Zero-code mode can reuse `attach(trainer, pl_module, ...)` (a Doctor for a Trainer whose
optimizers are configured) or insert `callback_for(trainer)` into `trainer.callbacks`.

In a multi-process run (`strategy="ddp"`) every rank's callback watches its rank: each writes
RUN_DIR/ranks/rank<N>/ of one job, merged at close (distributed/merge.py). Lightning's own
launcher (`_SubprocessScriptLauncher`: rank 0 runs the script and starts the other local ranks
by running it again) would give rank 0 and its children different run ids (each derives the id
from its parent process): while a callback exists, the launcher first sets TRAINDOCTOR_RUN_ID,
which the children inherit (rank 0 reads it at on_fit_start, after the launch).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .._patching import Patch, acquire, release
from .._validate import reject_positional, reject_unknown, show
from ..distributed.run_id import ENV_RUN_ID
from ..doctor import Doctor
from ..errors import UsageError
from ..options import WATCH_OPTIONS, Options

_CALLER = "traindoctor.lightning.Doctor"
_OPTIONS = (*WATCH_OPTIONS, "mode", "max_steps")

# Metric names that doc.log() takes as its own parameters: passed under another name.
_RESERVED = {"loss": "loss_logged", "parts": "parts_logged"}


class LightningDoctor(Doctor):
    """A Doctor whose optimizer pre-step waits for Lightning's closure (see the module doc)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._deferred: dict[int, Callable[[], None]] = {}
        self._val_metrics_before: dict[str, Any] = {}

    def optimizer_step_hook(self, opt: torch.optim.Optimizer, pre: bool):  # noqa: ANN202
        hook = super().optimizer_step_hook(opt, pre)
        if not pre:

            def post_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
                # A custom optimizer that never called the closure: the pre-step still runs,
                # late, so that the step is counted and closed.
                self.run_deferred(optimizer)
                hook(optimizer, args, kwargs)

            return post_hook

        def pre_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            closure = kwargs.get("closure", args[0] if args else None)
            if callable(closure) and not self.state.closed:
                # Gradients appear only when step() calls the closure: wait for Lightning's
                # on_before_optimizer_step (see module doc). The closure's backward passes
                # evaluate this step from now (L-BFGS runs several: steps.py).
                steps = self._steps
                steps.step_began(optimizer)

                def deferred() -> None:
                    evaluations = steps.evaluations
                    hook(optimizer, args, kwargs)
                    steps.evaluations = evaluations

                self._deferred[id(optimizer)] = deferred
                return
            hook(optimizer, args, kwargs)

        return pre_hook

    def run_deferred(self, optimizer: Any) -> None:
        """Run a pre-step deferred until the closure's backward (on_before_optimizer_step)."""
        pending = self._deferred.pop(id(optimizer), None)
        if pending is not None:
            pending()


def attach(
    trainer: Any,
    pl_module: Any,
    *,
    out_dir: str | Path = "traindoctor-runs",
    budget: float = 0.03,
    console: bool = True,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    mode: str = "lightning",
) -> LightningDoctor | None:
    """A Doctor watching this Trainer's LightningModule, optimizers and AMP scaler.

    Call it once the optimizers are configured (`on_fit_start`). Returns None when there is
    nothing to watch (no optimizer: `configure_optimizers` returned None).
    """
    if not hasattr(trainer, "optimizers"):
        raise UsageError(
            f"traindoctor.lightning.attach() takes a Lightning Trainer first, got {show(trainer)}; "
            "pass attach(trainer, pl_module) once its optimizers are configured (on_fit_start)"
        )
    if not isinstance(pl_module, torch.nn.Module):
        raise UsageError(
            f"traindoctor.lightning.attach() takes the LightningModule second, got "
            f"{show(pl_module)}; pass attach(trainer, pl_module)"
        )
    options = Options.checked(
        "traindoctor.lightning.attach",
        out_dir=out_dir,
        budget=budget,
        console=console,
        select=select,
        ignore=ignore,
        mode=mode,
    )
    return attach_with(trainer, pl_module, options)


def attach_with(
    trainer: Any, pl_module: Any, options: Options, rules: list[Any] | None = None
) -> LightningDoctor | None:
    """`attach` with options built by the caller (the callback); `rules`: the rules to run
    (None: pyproject.toml's selection, see Doctor)."""
    optimizers = [o for o in trainer.optimizers if isinstance(o, torch.optim.Optimizer)]
    if not optimizers:
        return None
    plugin = getattr(trainer, "precision_plugin", None)
    scaler = getattr(plugin, "scaler", None)
    if scaler is not None and not callable(getattr(scaler, "scale", None)):
        scaler = None
    doc = LightningDoctor(
        options=options, rules=rules, framework="lightning", script=type(pl_module).__name__
    )
    # The prefix "" keeps parameter names as the module's attribute paths (`encoder.0.weight`);
    # the report names the model by the LightningModule's class (facts["models"]).
    doc.attach({"": pl_module}, optimizers, scaler)
    doc.timeline.facts["lightning"] = {
        "precision": str(getattr(trainer, "precision", "")),
        "accumulate_grad_batches": getattr(trainer, "accumulate_grad_batches", 1),
        "automatic_optimization": bool(getattr(pl_module, "automatic_optimization", True)),
        "scaler": type(scaler).__name__ if scaler is not None else None,
    }
    return doc


def _fresh_metrics(metrics: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    """Metrics whose value object changed since the last read: Lightning stores a new tensor
    each time `self.log` is called, so identity tells a fresh value without a host read."""
    fresh: dict[str, Any] = {}
    for name, value in metrics.items():
        if seen.get(name) is value:
            continue
        seen[name] = value
        scalar = isinstance(value, torch.Tensor) and value.numel() == 1
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if scalar or number:
            fresh[name] = value
    return fresh


def _log_metrics(doc: Doctor, metrics: dict[str, Any], validating: bool) -> None:
    if not metrics:
        return
    named = {_RESERVED.get(k, k): v for k, v in metrics.items()}
    loss = None
    if validating:
        # The validation loss is the one logged name that says "loss" (val_loss, val/loss).
        losses = [k for k in metrics if "loss" in k.lower()]
        if len(losses) == 1:
            loss = named.pop(_RESERVED.get(losses[0], losses[0]))
    doc.log(loss=loss, **named)


def _share_run_id(original: Callable[..., Any]) -> Callable[..., Any]:
    """Lightning's launcher's `_call_children_scripts`, which first names the job
    (TRAINDOCTOR_RUN_ID, unless set already) so that the ranks it starts inherit the name."""

    def _call_children_scripts(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not os.environ.get(ENV_RUN_ID):
            stem = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
            stamp = time.strftime("%Y%m%d-%H%M%S")
            os.environ[ENV_RUN_ID] = f"{stamp}-{stem or 'run'}-{secrets.token_hex(4)}"
        return original(self, *args, **kwargs)

    return _call_children_scripts


def _launcher_patch(package: str) -> Patch | None:
    """The patch of `package`'s subprocess-script launcher (None where it has none)."""
    import importlib

    try:
        module = importlib.import_module(_LAUNCHER_MODULE.format(package))
        launcher = module._SubprocessScriptLauncher
    except (ImportError, AttributeError):
        return None
    if not callable(getattr(launcher, "_call_children_scripts", None)):
        return None
    return Patch(launcher, "_call_children_scripts", _share_run_id)


def _traindoctor_command() -> list[str] | None:
    """This process's `traindoctor run ...` command line (sys.orig_argv), to start another rank
    with; None where this process was not started by that command (`cli.main()` called from
    another program: its command line would start that program again)."""
    rest = list(getattr(sys, "orig_argv", None) or [])[1:]
    for i, arg in enumerate(rest):
        by_module = rest[i : i + 2] == ["-m", "traindoctor"]
        by_script = os.path.basename(arg) in ("traindoctor", "traindoctor.exe")
        if by_module or by_script:
            after = rest[i + (2 if by_module else 1) :]
            return [sys.executable, *rest] if after[:1] == ["run"] else None
        if not arg.startswith("-"):
            return None  # a script or a module of its own before any traindoctor
    return None


def _rerun_under_traindoctor(original: Callable[..., Any]) -> Callable[..., Any]:
    """Lightning's command for the ranks it starts (`python script args`), turned into this
    process's own `traindoctor run [options] script args` so that they are watched too."""

    def _basic_subprocess_cmd(*args: Any, **kwargs: Any) -> Any:
        command = original(*args, **kwargs)
        ours = _traindoctor_command()
        return ours if ours is not None else command

    return _basic_subprocess_cmd


class _ThenLoader:
    """A module's own loader, and `then()` once the module is executed (errors swallowed: a
    user's import never fails because of traindoctor)."""

    def __init__(self, loader: Any, then: Callable[[], None]) -> None:
        self._loader, self._then = loader, then

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        try:
            self._then()
        except Exception:  # noqa: BLE001, S110  (the module is imported; we only lose the patch)
            pass

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... as the loader's
        return getattr(self._loader, name)


class _OnImport:
    """A sys.meta_path finder that runs `then()` after the named modules are imported."""

    def __init__(self, names: dict[str, Callable[[], None]]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        then = self.names.pop(fullname, None)
        if then is None:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or not callable(getattr(spec.loader, "exec_module", None)):
            return None
        spec.loader = _ThenLoader(spec.loader, then)
        return spec


def zero_code_launches() -> Callable[[], None]:
    """For `traindoctor run`, while the script runs: Lightning's launcher, which starts the other
    local ranks by running the script again (strategy="ddp" on one node), names the job first
    (TRAINDOCTOR_RUN_ID) and starts them under this process's own `traindoctor run` command, so
    that every rank is watched and in one job (without it rank 1 ran unwatched). Lightning is
    not imported here: the patches go on when its launcher's module is imported (at once where
    it is already). Returns what undoes it all."""
    import importlib.util

    held: list[Patch] = []

    def patch(package: str) -> None:
        module = sys.modules[_LAUNCHER_MODULE.format(package)]
        launcher = getattr(module, "_SubprocessScriptLauncher", None)
        if launcher is None or not callable(getattr(module, "_basic_subprocess_cmd", None)):
            return
        for p in (
            Patch(launcher, "_call_children_scripts", _share_run_id),
            Patch(module, "_basic_subprocess_cmd", _rerun_under_traindoctor),
        ):
            acquire(p)
            held.append(p)

    waiting: dict[str, Callable[[], None]] = {}
    for package in ("lightning.pytorch", "pytorch_lightning"):
        name = _LAUNCHER_MODULE.format(package)
        if name in sys.modules:
            patch(package)
        elif importlib.util.find_spec(package.split(".")[0]) is not None:
            waiting[name] = lambda package=package: patch(package)
    finder = _OnImport(waiting) if waiting else None
    if finder is not None:
        sys.meta_path.insert(0, finder)

    def undo() -> None:
        if finder is not None and finder in sys.meta_path:
            sys.meta_path.remove(finder)
        while held:
            release(held.pop())

    return undo


_LAUNCHER_MODULE = "{}.strategies.launchers.subprocess_script"
_HOLDS: dict[int, weakref.finalize] = {}  # callback id -> its hold on the launcher patch


def _let_go(key: int, patch: Patch) -> None:
    _HOLDS.pop(key, None)
    release(patch)


def callback_class(base: type, launcher_patch: Patch | None = None) -> type:
    """Build the traindoctor callback on a Lightning `Callback` base class (`lightning.pytorch`
    or `pytorch_lightning`: each Trainer accepts only callbacks of its own package).
    `launcher_patch`: held while a callback may still see its Trainer launch other ranks."""

    class TraindoctorCallback(base):  # type: ignore[misc, valid-type]
        """Attach traindoctor to `Trainer.fit`: `Trainer(callbacks=[TraindoctorCallback()])`.

        Options are those of `traindoctor.watch` (out_dir, budget, console, select, ignore).
        After fit, `callback.report` holds the Report and `callback.doctor` the Doctor.
        """

        def __init__(
            self,
            *args: Any,
            out_dir: str | Path = "traindoctor-runs",
            budget: float = 0.03,
            console: bool = True,
            select: Iterable[str] = (),
            ignore: Iterable[str] = (),
            mode: str = "lightning",
            max_steps: int | None = None,
            export: Any = "auto",
            **unknown: Any,
        ) -> None:
            # Checked here, not at on_fit_start where an error is only printed.
            reject_positional(_CALLER, args, _OPTIONS)
            reject_unknown(_CALLER, unknown, _OPTIONS)
            options = Options.checked(
                _CALLER,
                out_dir=out_dir,
                budget=budget,
                console=console,
                select=select,
                ignore=ignore,
                mode=mode,  # zero-code mode passes "zero-code"
                max_steps=max_steps,
                export=export,
            )
            super().__init__()
            # `traindoctor run --max-steps N`: fit stops gracefully after N optimizer steps,
            # stopped by this callback (on_train_batch_end), not by the Doctor.
            self.max_steps = options.max_steps
            self.options = options.but(max_steps=None)
            # Zero-code mode sets the session's rules (`traindoctor run`'s configuration).
            self.rules: list[Any] | None = None
            self.doctor: LightningDoctor | None = None
            self.report: Any = None
            self._seen: dict[str, Any] = {}
            self._val_seen: dict[str, Any] = {}
            # Until this callback's first fit has launched its ranks (see the module doc), or
            # it is gone: the hold is keyed by this instance (a copy holds nothing).
            if launcher_patch is not None:
                acquire(launcher_patch)
                _HOLDS[id(self)] = weakref.finalize(self, _let_go, id(self), launcher_patch)

        def _release_launcher(self) -> None:
            hold = _HOLDS.get(id(self))
            if hold is not None:
                hold()  # once: a finalizer runs at most once

        # -- fit lifecycle ---------------------------------------------------------------
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            # Every rank watches its own (a job of several ranks: one merged report).
            self._release_launcher()  # the ranks are launched by now
            self.report = None
            self._seen = {}
            try:
                self.doctor = attach_with(trainer, pl_module, self.options, self.rules)
            except Exception as exc:  # noqa: BLE001  (never stop the user's training)
                self.doctor = None
                print(f"traindoctor: could not attach to Lightning: {exc!r}", file=sys.stderr)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self._close(None)

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self._release_launcher()
            self._close(exception)

        def _close(self, exc: BaseException | None) -> None:
            doc, self.doctor = self.doctor, None
            if doc is not None:
                self.report = doc.close(exc)

        # -- steps -----------------------------------------------------------------------
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            doc = self.doctor
            if doc is None:
                return
            # Metrics of this step are read here, before the step closes (at on_train_batch_end
            # the step is over and they would land on the next one); on sampled steps only:
            # reading callback_metrics costs a host read per progress-bar metric.
            if doc.budget.sampled(doc.step):
                doc.guard.call("lightning metrics", self._log_train, trainer, doc)
            # Not behind the guard: the deferred hook guards its own parts, and a
            # StopTraining (zero-code --max-steps) must reach the loop.
            doc.run_deferred(optimizer)

        def _log_train(self, trainer: Any, doc: LightningDoctor) -> None:
            _log_metrics(doc, _fresh_metrics(trainer.callback_metrics, self._seen), False)

        # -- validation ------------------------------------------------------------------
        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            doc = self.doctor
            if doc is None or not self.max_steps or trainer.should_stop:
                return
            if doc.timeline.last_step >= self.max_steps:
                doc.timeline.event(doc.timeline.last_step, "stopped", reason="max_steps")
                trainer.should_stop = True  # Lightning ends fit after this batch

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            doc = self.doctor
            if doc is None:
                return
            doc.guard.call("lightning validation", doc.begin_validation)
            doc.guard.call("lightning validation", self._snapshot, trainer)

        def _snapshot(self, trainer: Any) -> None:
            self._val_seen = dict(trainer.callback_metrics)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            doc = self.doctor
            if doc is None:
                return
            # The sanity check's metrics are discarded by Lightning: not logged here either.
            if not getattr(trainer, "sanity_checking", False):
                doc.guard.call("lightning validation", self._log_val, trainer, doc)
            doc.guard.call("lightning validation", doc.end_validation)

        def _log_val(self, trainer: Any, doc: LightningDoctor) -> None:
            fresh = _fresh_metrics(trainer.callback_metrics, self._val_seen)
            self._seen.update(fresh)  # not fresh for the next training read either
            _log_metrics(doc, fresh, True)

    return TraindoctorCallback


_CLASSES: dict[str, type] = {}


def lightning_callback_class(package: str = "lightning.pytorch") -> type:
    """The callback class for `lightning.pytorch` or `pytorch_lightning` (built once)."""
    cls = _CLASSES.get(package)
    if cls is None:
        import importlib

        base = importlib.import_module(package).Callback
        cls = callback_class(base, _launcher_patch(package))
        cls.__module__ = "traindoctor.lightning"
        cls.__qualname__ = cls.__name__ = "TraindoctorCallback"
        _CLASSES[package] = cls
    return cls


def callback_for(trainer: Any, **options: Any) -> Any:
    """A traindoctor callback instance for this Trainer, of the Callback class of the
    package the Trainer comes from (for zero-code mode: `trainer.callbacks.append(...)`)."""
    module = type(trainer).__module__
    package = "pytorch_lightning" if module.startswith("pytorch_lightning") else "lightning.pytorch"
    return lightning_callback_class(package)(**options)

"""Zero-code mode: discover optimizers, models and losses of an unmodified script.

Global hooks, all removable: `Optimizer.__init__` (to know every optimizer and where it was
built), the global optimizer step pre-hook (optimizers built before we were installed), a
global module forward pre/post hook (root models and their outputs, on the first steps only),
`GradScaler.scale/update` and, through the Doctor, `Tensor.backward`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.modules import module as nn_module
from torch.optim import optimizer as optim_module

from .. import _patches
from .._heap import heap_roots, one_scan
from .._hooks import compiling
from .._mode_stack import UsersOff
from .._patching import Patch, acquire, release
from .._source import user_source
from ..bus import Event
from ..doctor import Doctor
from ..probes.audit import watch_requires_grad
from ..probes.forward import output_facts
from ..probes.loss_targets import watch_loss_targets
from ..scaler_find import update_role

# A later phase's optimizer: its first LATE_STEPS steps look for the models it trains; at most
# LATE_WINDOWS such phases a run (each keeps the global forward hooks on for its first steps).
LATE_STEPS = 3
LATE_WINDOWS = 8
LATE_WAIT = 20  # step() calls after which a later phase's optimizer not stepped is let go


class ZeroCodeSession:
    """Owns the global patches and attaches the Doctor to what the script creates."""

    def __init__(self, doctor: Doctor) -> None:
        self.doctor = doctor
        self._optimizers: list[weakref.ref] = []
        self._roots: dict[int, weakref.ref] = {}  # id(module) -> module called at depth 0
        self._depth = 0
        self._handles: list[Any] = []
        self._held: list[Patch] = []  # this session's process-wide patches
        self._scaler_patched: set[tuple[type, str]] = set()  # (GradScaler class, method)
        self._attached = False
        self._forward_hooks_live = False
        self._first_call: dict[int, tuple[Any, torch.Tensor]] = {}
        self._first_out: dict[int, dict[int, torch.Tensor]] = {}
        # A later phase (optimizers built after attach): each one's first steps are watched
        # for the models it trains (_later_phase_step); None until one is built.
        self._late_opts: weakref.WeakKeyDictionary | None = None
        self._late_roots: dict[int, weakref.ref] = {}  # called in training, with gradient
        self._late_windows = LATE_WINDOWS
        self._late_calls = 0  # optimizer step() calls seen while a later phase is open
        self._structural_over = False

    # -- install / uninstall ----------------------------------------------------------------
    delegated = False  # a framework callback watches the run (see _detect_framework)
    delegate: Any = None  # that callback, when it runs a doctor of its own

    def install(self) -> None:
        session = self
        original_init = torch.optim.Optimizer.__init__

        def init(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            original_init(opt, *args, **kwargs)
            session.doctor.guard.call("zero-code optimizer", session._on_optimizer, opt)

        self._patch(torch.optim.Optimizer, "__init__", init)
        self._handles.append(
            optim_module.register_optimizer_step_pre_hook(
                lambda opt, args, kwargs: self.doctor.guard.call(
                    "zero-code step", self._on_step, opt
                )
            )
        )
        self._install_forward_hooks()
        # torch.compile's module warns on every call while any global module hook is on
        # ("Using `torch.compile(module)` when there are global hooks"): ours must not make
        # it warn where the plain run does not (an error under -W error).
        patch = Patch(nn_module, "_has_any_global_hook", _users_global_hooks, optional=True)
        acquire(patch)
        self._held.append(patch)
        # Probes that measure the first forward, which runs before the lazy attach.
        for probe in self.doctor.probes:
            if hasattr(probe, "listen_early"):
                self.doctor.guard.call(f"probe {probe.name}", probe.listen_early)
        self._patch_grad_scaler()
        _patches.add_backward_listener(self._on_backward)
        # From the first line of the script: setting requires_grad on quantized params
        # usually happens in setup, before any optimizer or backward exists (TD501).
        self._handles.append(watch_requires_grad(self.doctor.run))
        # From the first loss call: out-of-range class targets raise there, before the first
        # backward attaches (TD511).
        self._handles.append(watch_loss_targets(self.doctor.run))

    def uninstall(self) -> None:
        _patches.remove_backward_listener(self._on_backward)
        self._remove_forward_hooks()
        if not self._attached:
            # Probes that listened from the start and were never attached (no backward ran):
            # their global patches go with the session (the doctor detaches attached ones).
            for probe in self.doctor.probes:
                if hasattr(probe, "listen_early"):
                    self.doctor.guard.call(f"probe {probe.name}", probe.detach)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for patch in reversed(self._held):
            release(patch)
        self._held.clear()
        self._scaler_patched.clear()

    def _patch(self, owner: Any, name: str, new: Any) -> None:
        # `new` closes over this session (one Patch per session, not shared between sessions).
        patch = Patch(owner, name, lambda _: new)
        acquire(patch)
        self._held.append(patch)

    def scaler_updated(self, scaler: Any, stepped: frozenset[int]) -> None:
        """A GradScaler's update() ran: the step boundary when it is the scaler of the first
        watched optimizer (a GAN's second scaler is not), skipped steps too."""
        ctx = self.doctor.run.attached
        if ctx is None:
            return
        adopt, boundary = update_role(ctx, scaler, stepped)
        if adopt:
            ctx.scaler = scaler
        if boundary:
            self.doctor.scaler_updated()

    def _patch_grad_scaler(self) -> None:
        """GradScaler's scale()/update(), and those of torch's subclasses loaded by now that
        define them (FSDP's ShardedGradScaler: imported by the script, so looked for again
        when an optimizer is built)."""
        done = self._scaler_patched
        for method in ("scale", "update"):
            for cls in _patches.scaler_classes(method):
                if (cls, method) not in done:
                    done.add((cls, method))
                    self._patch_scaler_method(cls, method)

    def _patch_scaler_method(self, scaler_cls: type, method: str) -> None:
        scale_fn, update_fn = vars(scaler_cls).get("scale"), vars(scaler_cls).get("update")
        session = self

        def scale(scaler: Any, outputs: Any) -> Any:
            out = scale_fn(scaler, outputs)
            _patches.note_scaled(out, outputs)
            if session._attached:
                session.doctor.use_scaler(scaler)
            return out

        def update(scaler: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                stepped = _patches.scaler_stepped(scaler)
            except Exception:  # noqa: BLE001  (never into the user's update())
                stepped = frozenset()
            result = update_fn(scaler, *args, **kwargs)
            if session.delegated:
                return result  # the framework's callback watches this scaler's steps
            if session._attached:
                session.doctor.guard.call("scaler update", session.scaler_updated, scaler, stepped)
            return result

        self._patch(scaler_cls, method, scale if method == "scale" else update)

    # -- forward discovery ------------------------------------------------------------------
    def _install_forward_hooks(self) -> None:
        self._handles_fwd = [
            nn_module.register_module_forward_pre_hook(self._pre_forward),
            nn_module.register_module_forward_hook(self._post_forward, always_call=True),
        ]
        self._forward_hooks_live = True

    def _remove_forward_hooks(self) -> None:
        if self._forward_hooks_live:
            for h in self._handles_fwd:
                h.remove()
            self._forward_hooks_live = False

    def _pre_forward(self, module: torch.nn.Module, args: Any) -> None:
        if compiling():
            return
        if self._depth == 0:
            if self._late_opts is not None and module.training and torch.is_grad_enabled():
                with contextlib.suppress(TypeError):
                    self._late_roots.setdefault(id(module), weakref.ref(module))
            with contextlib.suppress(TypeError):
                self._roots.setdefault(id(module), weakref.ref(module))
            if not self._attached and module.training and torch.is_grad_enabled():
                # Until the doctor attaches (at the first backward), keep the root call's
                # inputs (references) and RNG state: a NaN on step 1 can then be replayed.
                self._first_call[id(module)] = (args, torch.get_rng_state())
        self._depth += 1

    def _post_forward(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if compiling():
            return
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and not (self._structural_over and self._late_opts is not None):
            with UsersOff():  # the user's tensor subclasses and modes do not see our reads
                if not self._attached and id(module) in self._first_call:
                    guard = self.doctor.guard
                    guard.call("zero-code forward", self._keep_output_grads, module, output)
                self.doctor.guard.call(
                    "zero-code forward", self.doctor.note_model_output, output_facts(output)
                )

    def _keep_output_grads(self, module: torch.nn.Module, output: Any) -> None:
        """Before attach, as the numerics probe does after: references to dL/d output."""
        from ..probes.numerics import keep_output_grads

        self._first_out[id(module)] = keep_output_grads(output)

    # -- discovery --------------------------------------------------------------------------
    def _on_optimizer(self, opt: torch.optim.Optimizer) -> None:
        self.doctor.guard.call("zero-code framework", self._detect_framework)
        self.doctor.guard.call("zero-code scaler", self._patch_grad_scaler)
        if self.delegated:
            return  # the framework's callback watches this run
        self._optimizers.append(weakref.ref(opt))
        src = user_source(skip=1)
        if src:
            self.doctor.created_at[id(opt)] = src
        if self._attached:
            self.doctor.add_optimizer(opt)
            self._open_later_phase(opt)

    def _on_step(self, opt: torch.optim.Optimizer) -> None:
        if self.delegated:
            return
        if not any(r() is opt for r in self._optimizers):
            self._optimizers.append(weakref.ref(opt))
        if not self._attached:
            self._attach()
            return
        if opt not in self.doctor.optimizers:  # identity: Optimizer has no __eq__
            self.doctor.add_optimizer(opt)
            self._open_later_phase(opt)
        late = self._late_opts  # None but in a later phase's first steps (a dict: calls)
        if late is not None:
            self._late_calls += 1
            if opt in late:
                self.doctor.guard.call("zero-code later phase", self._later_phase_step, opt)
            else:
                self.doctor.guard.call("zero-code later phase", self._let_go_idle)

    def _let_go_idle(self) -> None:
        """A later phase's optimizer that has not stepped in LATE_WAIT optimizer steps since it
        was built (built, then unused; or one built every step) closes its window, so the
        forward hooks do not stay on for good. Counted in step() calls, not in steps (the step
        clock may not move: a new optimizer every step never takes it over)."""
        late = self._late_opts
        if late is None:
            return
        for opt, (_, opened) in list(late.items()):
            if self._late_calls - opened > LATE_WAIT:
                late.pop(opt, None)
        if not late:
            self._close_later_phases()

    def _close_later_phases(self) -> None:
        self._late_opts = None
        self._late_roots.clear()
        if self._structural_over:
            self._remove_forward_hooks()

    def _on_backward(self, root: torch.Tensor, loss: torch.Tensor) -> None:
        if not self._attached and not self.delegated:
            self.doctor.guard.call("zero-code attach", self._attach, root)
            if self._attached:
                # The doctor started listening during this dispatch: hand it this backward too.
                self.doctor.observe_backward(root, loss)

    # -- frameworks: their own callback watches the run --------------------------------
    def _detect_framework(self) -> None:
        """An optimizer built inside a Lightning `fit`, a Hugging Face `train()` or an
        Ultralytics trainer's setup: hand the run to that framework's callback, which knows
        its steps, closures, metrics and evaluation loop. Hugging Face's and Ultralytics'
        callbacks attach this session's doctor; Lightning's makes its own (it defers closure
        steps), whose report the runner then uses."""
        if self.delegated:
            return
        trainer, kind = _framework_trainer()
        if trainer is None:
            return
        doc = self.doctor
        if kind == "ultralytics":
            from . import ultralytics as ul

            owners = [getattr(h, "__self__", None) for hs in trainer.callbacks.values() for h in hs]
            mine = next((o for o in owners if isinstance(o, ul.Doctor)), None)
            if mine is None:
                ul.Doctor(doctor=doc).add_to(trainer)  # attaches this session's doctor
            else:
                self.delegate = mine  # the script attached its own: its report is the run's
        elif kind == "transformers":
            from . import transformers as hf

            handler = getattr(trainer, "callback_handler", None)
            callbacks = getattr(handler, "callbacks", [])
            if not any(isinstance(cb, hf.Doctor) for cb in callbacks):
                hf.attach_trainer(trainer, doctor=doc)
        else:
            from .lightning import callback_for

            if not any(type(cb).__module__.startswith("traindoctor") for cb in trainer.callbacks):
                callback = callback_for(
                    trainer,
                    out_dir=doc.out_dir,
                    budget=doc.budget.budget,
                    console=doc.console,
                    mode="zero-code",
                    max_steps=doc.max_steps,
                )
                callback.rules = doc.rules  # `traindoctor run`'s selection and rule options
                trainer.callbacks.append(callback)
                self.delegate = callback
        doc.framework = kind
        doc.timeline.facts["framework"] = kind
        self.delegated = True

    def delegate_report(self) -> Any:
        """The report of the framework doctor that watched the run instead of this session's
        (Lightning), or None."""
        return getattr(self.delegate, "report", None) if self.delegate is not None else None

    def _attach(self, root: torch.Tensor | None = None) -> None:
        if self._attached:
            return
        # One heap scan for this attach: the copies probe (in doctor.attach) reuses the one
        # that found the models (_heap.one_scan).
        with one_scan():
            optimizers = [o for o in (r() for r in self._optimizers) if o is not None]
            opt_ids = {id(p) for o in optimizers for g in o.param_groups for p in g["params"]}
            roots = [m for m in (r() for r in self._roots.values()) if m is not None]
            # Models: the outermost modules that hold the optimizers' params, found once in the
            # heap (the script may only ever call submodules), plus any root module called in
            # forward with params of its own that no optimizer holds (that is TD103, not noise).
            owners = _owning_models(opt_ids)
            # Deterministic names: models in the order their optimizers were built.
            owners.sort(key=lambda m: _first_optimizer(m, optimizers))
            inside = {id(sub) for m in owners for sub in m.modules()}
            # A root whose params all live on the meta device holds no values (a shape template
            # run by torch.func.functional_call with generated weights, a hypernetwork's
            # target): no model of the run.
            called = [
                m
                for m in roots
                if id(m) not in inside and any(not p.is_meta for p in m.parameters())
            ]
            models = _outermost(owners + called)
            named = {}
            if len(models) == 1:
                named[""] = models[0]
            else:
                used: set[str] = set()
                for m in models:
                    base = type(m).__name__
                    name, k = base, 1
                    while name in used:
                        k += 1
                        name = f"{base}{k}"
                    used.add(name)
                    named[f"{name}."] = m
            if not named and not optimizers and root is not None:
                # No module, no optimizer: tensors trained by hand (`w = torch.randn(...,
                # requires_grad=True)`), found as the leaves of this backward's graph.
                from ..loose import LooseTensors, graph_leaves, name_tensors

                leaves = graph_leaves(root)
                if leaves:
                    named[""] = LooseTensors(name_tensors(leaves))
            if not named and not optimizers:
                return  # nothing to watch yet
            self._attached = True
            # The primary optimizer is the one holding the most of the models' params.
            if optimizers and named:
                model_ids = {id(p) for m in named.values() for p in m.parameters()}
                optimizers.sort(
                    key=lambda o: (
                        -sum(id(p) in model_ids for g in o.param_groups for p in g["params"])
                    )
                )
            del opt_ids
            self.doctor.attach(named, optimizers, scaler=None)
        numerics = self.doctor.probe("numerics")
        for prefix, model in named.items():
            call = self._first_call.get(id(model))
            if call is not None and numerics is not None:
                numerics.seed_last_call(
                    prefix, call[0], {}, call[1], self._first_out.get(id(model))
                )
        self._first_call.clear()
        self._first_out.clear()

    def after_structural_phase(self) -> None:
        self._structural_over = True
        if self._late_opts is None:
            self._remove_forward_hooks()

    # -- later phases -----------------------------------------------------------------------
    def _open_later_phase(self, opt: torch.optim.Optimizer) -> None:
        """An optimizer built after attach: a later phase may train models no one watches yet
        (a student after its teacher, a classifier after pretraining, a critic after a warm-up).
        The forward hooks listen again until its LATE_STEPS first steps, which look for them
        (_later_phase_step). At most LATE_WINDOWS phases, so that a loop building an optimizer
        every step keeps no hook on for good."""
        if self._late_windows <= 0:
            return
        self._late_windows -= 1
        if self._late_opts is None:
            self._late_opts = weakref.WeakKeyDictionary()
        self._late_opts[opt] = (0, self._late_calls)
        ctx = self.doctor.context
        if not self._forward_hooks_live and ctx is not None and not ctx.compiled:
            # (Not while a watched model runs compiled: a global hook added or removed
            # recompiles it. Its phase's models are then found from its tensors alone.)
            self._install_forward_hooks()

    def _later_phase_step(self, opt: torch.optim.Optimizer) -> None:
        """One of a later phase optimizer's first steps: the models it trains that no watched
        model holds (found once in the heap, from its tensors), and the root modules called in
        training with gradient recording on since the phase began whose params no watched
        model holds got a gradient (a student the optimizer was wrongly not built over), are
        watched from now on (Doctor.add_models)."""
        late = self._late_opts
        assert late is not None
        n, opened = late.get(opt, (LATE_STEPS, 0))
        ctx = self.doctor.context
        if ctx is None:
            return
        names = ctx.param_names
        found: list[torch.nn.Module] = []
        if n == 0:
            unnamed = {id(p) for g in opt.param_groups for p in g["params"] if id(p) not in names}
            if unnamed:
                found.extend(_owning_models(unnamed))
        # A root called with gradient on counts when its unwatched params hold a gradient now
        # (its backward ran): a copy run for targets and detached (an EMA, a mean teacher made
        # in this phase) is no model this phase trains.
        for ref in list(self._late_roots.values()):
            m = ref()
            if m is not None and any(
                p.grad is not None and id(p) not in names for p in m.parameters()
            ):
                found.append(m)
        self._late_roots.clear()
        if found:
            self.doctor.add_models(_outermost(found))
        if n + 1 >= LATE_STEPS:
            late.pop(opt, None)
        else:
            late[opt] = (n + 1, opened)
        self._let_go_idle()


def _owning_models(param_ids: set[int]) -> list[torch.nn.Module]:
    """Top-level modules (no parent module) holding any of these tensors, in the collector's
    order (the heap scan of _heap.heap_roots, shared inside one_scan)."""
    if not param_ids:
        return []
    return [m for m in heap_roots() if any(id(p) in param_ids for p in m.parameters())]


def _first_optimizer(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> int:
    ids = {id(p) for p in model.parameters()}
    for i, opt in enumerate(optimizers):
        if any(id(p) in ids for g in opt.param_groups for p in g["params"]):
            return i
    return len(optimizers)


def _outermost(models: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """Drop models that are submodules of another root model (called standalone sometimes)."""
    out = []
    for m in models:
        if any(other is not m and any(sub is m for sub in other.modules()) for other in models):
            continue
        out.append(m)
    return out


_GLOBAL_HOOKS = (
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
)


def _users_global_hooks(original: Any) -> Any:
    """torch.nn.modules.module._has_any_global_hook (read by torch.compile's module only, for
    its warning) counting the global module hooks that are not traindoctor's."""

    def has_any_global_hook() -> bool:
        for name in _GLOBAL_HOOKS:
            for fn in getattr(nn_module, name, {}).values():
                where = getattr(fn, "__module__", None) or type(fn).__module__
                if not str(where).startswith("traindoctor."):
                    return True
        return False

    return has_any_global_hook


@contextlib.contextmanager
def attached(doctor: Doctor) -> Iterator[ZeroCodeSession]:
    """Install zero-code discovery for the duration of the block; the Doctor is closed after."""
    session = ZeroCodeSession(doctor)
    session.install()

    def step_opened(step: int, sampled: bool, rec: Any) -> None:
        if step > doctor.budget.structural_steps:
            session.after_structural_phase()

    unsubscribe = doctor.bus.subscribe(Event.STEP_OPENED, step_opened, "zero-code session")
    try:
        yield session
    finally:
        unsubscribe()
        session.uninstall()


def _framework_trainer() -> tuple[Any, str | None]:
    """The Lightning, Hugging Face or Ultralytics trainer whose method is running up the
    stack, if any. Only frameworks already imported are looked for (no import here)."""
    import sys

    if "ultralytics" in sys.modules:
        from .ultralytics import ultralytics_trainer

        frame = sys._getframe(1)
        for _ in range(64):
            if frame is None:
                break
            trainer = ultralytics_trainer(frame)
            if trainer is not None:
                return trainer, "ultralytics"
            frame = frame.f_back
    from .._source import library_self

    kinds = []
    if "transformers" in sys.modules:
        kinds.append(("transformers", "transformers.trainer"))
    for pkg in ("lightning.pytorch", "pytorch_lightning"):
        if pkg in sys.modules:
            kinds.append(("lightning", f"{pkg}.trainer"))
    if not kinds:
        return None, None
    packages = tuple(prefix.rsplit(".", 1)[0] for _, prefix in kinds)
    frame = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            break
        # The frameworks' own frames only (_source.library_self: a user frame's f_locals
        # would be snapshotted, keeping a model its code had `del`ed alive); a user subclass
        # of the Trainer is `self` of the framework's method that calls the user's override.
        obj = library_self(frame, packages)
        if obj is not None:
            # The framework's Trainer or a user subclass of it (a custom compute_loss, say).
            for cls in type(obj).__mro__:
                if cls.__name__ != "Trainer":
                    continue
                for kind, prefix in kinds:
                    if cls.__module__.startswith(prefix):
                        return obj, kind
        frame = frame.f_back
    return None, None

"""Non-finite values: where a NaN/Inf first appears (loss, gradient, activation), and
non-finite activations hidden from the loss by NaN-prevention code (nan_to_num, where, clamp).

Cost, per step:
- every backward: `isfinite(loss)` as a device flag (one tiny kernel, no host sync; on CPU the
  loss is read directly, a read there waits for no device);
- before each optimizer step: the loss flags, plus on sampled steps (or on every step when it
  is predicted, from the counted work, to cost under `EVERY_STEP_MAX` of a step) one fused
  `torch._foreach_norm` over the gradients the optimizer is about to apply, reduced to one
  flag. Where a read is free (CPU) the flags are read at once, before `optimizer.step()`
  applies a NaN. On a device (CUDA, ...) an unsampled step's flags stay there: they are read,
  with every step's since, in ONE transfer at the next sampled step, every `READ_EVERY` steps
  and at close, so no unsampled step synchronises the host. The step of a non-finite value is
  still exact (each step keeps its own flags); its autopsy then replays the model as it is at
  the read (tests/test_host_syncs.py forces this path on CPU and counts the reads);
- on sampled steps: a forward hook per module computing `isfinite(output).all()` flags, read
  with the same single read (the masked-NaN check, TD212);
- the root model's forward pre-hook keeps a *reference* (no copy) to the last training
  batch's args/kwargs, and the CPU (and CUDA) RNG state, for the autopsy.

The autopsy runs only when a non-finite value was found (at most `MAX_AUTOPSIES` per run): the
last batch is replayed on a `copy.deepcopy` of the model inside `torch.random.fork_rng`, with
forward hooks on every module and a TorchFunctionMode that names the first op whose output is
non-finite while its inputs are finite (and the op that turns non-finite inputs into finite
outputs, for TD212), with the user's source line. The user's model, optimizer, gradients and
RNG are never touched.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch.overrides import TorchFunctionMode

from .._anomaly_window import close_window, open_window
from .._graph import graph_nodes, node_source
from .._hooks import CopySafeHook, copy_without_hooks
from .._mode_stack import TorchFunctionOn, UsersOff
from .._source import user_line_in_traceback, user_source
from ..bus import Event
from ..distributed.dtensor import local_all
from ..timeline import signal
from ._param_stats import shared as param_stats
from ._switch import HookSwitch
from .base import AttachContext, Probe, Recorder, iter_tensors

NUMERICS_CHECKED = signal(
    "numerics.checked",
    "per step: {loss: bool, grads: bool} which finiteness checks ran before step() (1 = all finite)",
)
NUMERICS_NONFINITE = signal(
    "numerics.nonfinite", "per step: what was non-finite: subset of loss, grads, activations"
)
# Events: "nonfinite" (first cause of a non-finite value, from the autopsy) and
# "nonfinite_masked" (a module output non-finite while the loss stayed finite).

EVERY_STEP_MAX = 0.005  # gradient check on every step when it costs under 0.5% of step time
# Flags of unsampled steps on a device wait at most this many steps for their read (the
# Recorder's read-back cadence, steps.READBACK_EVERY).
READ_EVERY = 25
# Whether reading a CPU tensor is free (no device to wait for). Tests set it False to run the
# device path on CPU and count its reads (tests/test_host_syncs.py).
CPU_READS_FREE = True
# The check's predicted cost (one fused norm over the grads, bench/schedule_calibration.py).
CHECK_PER_TENSOR_S = 3e-6
CHECK_PER_ELEMENT_S = 0.5e-9
MAX_AUTOPSIES = 3
# Module outputs checked per sampled step (the masked-NaN check, TD212); bigger models check
# their modules in groups of this size in turn (see `_flag_groups`).
FLAG_MODULES = 512
MAX_LOCALISING = 8  # sampled steps with every module checked after a group saw a NaN/Inf
OUT_GRAD_MAX_NUMEL = 1 << 22  # outputs up to 4M elements keep their incoming gradient
MAX_MASKED_EVENTS = 4
_MASKING_OPS = ("nan_to_num", "where", "masked_fill", "clamp", "clip", "clamp_min", "clamp_max")
# Ops that turn finite inputs into non-finite outputs, recomputed from an intact loss graph.
_RECOMPUTE = {
    "LogBackward0": ("log", lambda n: torch.log(n._saved_self), "_saved_self"),
    "Log2Backward0": ("log2", lambda n: torch.log2(n._saved_self), "_saved_self"),
    "Log10Backward0": ("log10", lambda n: torch.log10(n._saved_self), "_saved_self"),
    "Log1PBackward0": ("log1p", lambda n: torch.log1p(n._saved_self), "_saved_self"),
    "DivBackward0": ("div", lambda n: n._saved_self / n._saved_other, "_saved_other"),
    "ReciprocalBackward0": ("reciprocal", lambda n: n._saved_result, None),
    "RsqrtBackward0": ("rsqrt", lambda n: n._saved_result, None),
    "SqrtBackward0": ("sqrt", lambda n: n._saved_result, None),
    "ExpBackward0": ("exp", lambda n: n._saved_result, None),
    "PowBackward0": ("pow", lambda n: n._saved_self**n._saved_exponent, "_saved_self"),
}


class NumericsProbe(Probe):
    name = "numerics"
    provides: ClassVar[tuple[str, ...]] = (NUMERICS_CHECKED, NUMERICS_NONFINITE)
    provides_events: ClassVar[tuple[str, ...]] = ("nonfinite", "nonfinite_masked")

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, tuple[Any, Any, Any, Any]] = {}  # root -> (args, kwargs, rng, cuda)
        self._loss_flags: list[torch.Tensor | bool] = []
        self._loss: torch.Tensor | None = None  # the step's last loss (its graph structure)
        self._loss_culprits: list[dict[str, Any]] | None = None
        # Per-module output checks of a sampled step: 0-d values that are all finite exactly
        # when the outputs are (their min and max), and the module of each, in call order.
        # (Every _CHUNK of them stacked in one 1-D tensor as they come: `_stack_tail`; the
        # entries before `_stacked` are done.)
        self._module_vals: list[torch.Tensor] = []
        self._module_quals: list[str] = []
        self._stacked = 0
        self._input_flags: list[torch.Tensor] = []
        self._flags: HookSwitch | None = None  # per-module finiteness flags, sampled steps
        # Models of more than FLAG_MODULES modules: the roots in `_flags`, the other modules
        # dealt into groups of at most FLAG_MODULES, one group a sampled step in turn (by
        # sampled-step count: the same steps in every run); a non-finite value seen in a
        # group has every module checked on the next sampled step, which names the first.
        self._flag_groups: list[HookSwitch] = []
        self._group_turn = 0
        self._partial = False  # this step checks one group only
        self._full_next = False
        self._localised = 0
        self._checked = False
        # Flags of earlier steps not read yet (device path): (step, flags, n_loss, n_grad,
        # grads checked, loss tensor, applied), in step order.
        self._pending: list[tuple[int, list[Any], int, int, bool, Any, bool]] = []
        self._every_step = True  # until the work is counted (budget.py): then decided once
        self._every_step_decided = False
        self._autopsies = 0
        self._masked_events = 0
        self._masked_seen: set[str] = set()
        self._causes: set[tuple[Any, ...]] = set()
        self._out_grads: dict[int, torch.Tensor] = {}  # output index -> dL/d output, last step
        self._sourceless: set[tuple[Any, ...]] = set()
        self._in_autopsy = False
        # Anomaly-mode flags to restore while the loss window is open (structural steps only).
        self._window: bool | None = None  # True while our anomaly window is open
        self._window_hooks: list[Any] = []
        self._loss_sources: dict[str, list[str]] = {}  # autograd node kind -> user lines

    # -- attaching ------------------------------------------------------------------------
    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        # Registered once, off: a sampled step switches them on (see _switch.py).
        self._flags = HookSwitch(ctx)
        modules = [
            (prefix, name, module)
            for prefix, model in ctx.eager_models().items()
            for name, module in model.named_modules()
        ]
        inner = sum(1 for _, name, _ in modules if name)
        groups = 1 if len(modules) <= FLAG_MODULES else -(-inner // FLAG_MODULES)
        self._flag_groups = [HookSwitch(ctx) for _ in range(groups)] if groups > 1 else []
        i = 0
        for prefix, name, module in modules:
            qual = f"{prefix}{name}" if name else (prefix.rstrip(".") or "<model>")
            switch = self._flags
            if name and self._flag_groups:
                # dealt in turn: a group spans the whole model (a NaN that runs through a
                # stretch of layers shows in every group sooner than in a block of them)
                switch = self._flag_groups[i % groups]
                i += 1
            switch.forward_hook(prefix, module, ctx.hook("probe numerics", self._flag_hook(qual)))
        for prefix, model in ctx.models.items():
            self.handles.append(
                model.register_forward_pre_hook(
                    CopySafeHook(self._make_capture(prefix)), with_kwargs=True
                )
            )
            self.handles.append(
                model.register_forward_hook(ctx.hook("probe numerics", self._watch_output))
            )

    def _watch_output(self, module: torch.nn.Module, _args: Any, output: Any) -> None:
        """Keep a reference to the gradient the user's backward sends into the model's outputs
        (dL/d output): with it, an autopsy can replay the backward of the model alone under
        anomaly detection. Small outputs only (logits, boxes), so no large tensor outlives its
        backward; nothing is copied and the gradient is returned untouched."""
        if self._in_autopsy or not module.training or not torch.is_grad_enabled():
            return
        assert self.ctx is not None
        ctx = self.ctx
        if ctx.state.validating:
            return
        if not (self._every_step or ctx.budget.sampled(ctx.state.step)):
            # Only a step whose gradients are checked can need a backward-only replay: a
            # hook per step would cost more than the rest of the probe (~3% of a fast step).
            self._out_grads = {}
            return
        self._out_grads = keep_output_grads(output)

    def seed_last_call(
        self,
        prefix: str,
        args: Any,
        kwargs: Any,
        rng: torch.Tensor,
        out_grads: dict[int, torch.Tensor] | None = None,
    ) -> None:
        """The batch (and output gradients, filled by the ongoing backward) of a forward that
        ran before attach: zero-code mode's first step."""
        self._last.setdefault(prefix, (args, kwargs, rng, None))
        if out_grads is not None:
            self._out_grads = out_grads

    def _make_capture(self, prefix: str):
        ctx = self.ctx
        assert ctx is not None
        guard = ctx.guard

        # A closure (not a bound method) in a CopySafeHook: copies of the model get an inert hook.
        def capture(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            if self._in_autopsy or not module.training or not torch.is_grad_enabled():
                return
            if ctx.state.validating or "probe numerics" in guard.disabled:
                return
            t0 = time.perf_counter()
            try:
                cuda = None
                if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
                    tensors: Any = args  # model(x): the usual call, without a tree walk
                else:
                    tensors = iter_tensors((args, kwargs))
                for t in tensors:
                    if t.is_cuda:
                        cuda = (t.device, torch.cuda.get_rng_state(t.device))
                        break
                # References only: the batch itself is not copied.
                self._last[prefix] = (args, kwargs, torch.get_rng_state(), cuda)
                if self._flags is not None and self._flags.active:
                    self._input_flags.extend(_finite_flags(iter_tensors((args, kwargs))))
            except Exception as exc:  # noqa: BLE001
                guard.record("probe numerics", exc)
            ctx.budget.spend(time.perf_counter() - t0)

        return capture

    # -- per step -------------------------------------------------------------------------
    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._remove_step_hooks()
        self._loss_flags = []
        self._loss = None
        self._loss_culprits = None
        self._module_vals = []
        self._module_quals = []
        self._stacked = 0
        self._input_flags = []
        self._checked = False
        self._close_window()
        for h in self._window_hooks:
            h.remove()
        self._window_hooks.clear()
        self._partial = False
        if sampled and self._masked_events < MAX_MASKED_EVENTS and self._flags is not None:
            self._flags.on()
            groups = self._flag_groups
            if groups and self._full_next:
                self._full_next = False
                for g in groups:
                    g.on()
            elif groups:
                groups[self._group_turn % len(groups)].on()
                self._group_turn += 1
                self._partial = True
        ctx = self.ctx
        if ctx is not None and step <= ctx.budget.structural_steps:
            # Structural steps only: which source line creates each op of the loss code (the
            # ops run between the model's forward and backward), to name the line of a
            # non-finite loss later.
            for model in ctx.eager_models().values():
                self._window_hooks.append(
                    model.register_forward_hook(ctx.hook("probe numerics", self._open_window))
                )

    def _open_window(self, module: torch.nn.Module, _args: Any, _output: Any) -> None:
        assert self.ctx is not None
        if self._window is not None or self._in_autopsy or not module.training:
            return
        if not torch.is_grad_enabled() or self.ctx.state.validating:
            return
        if torch.is_anomaly_enabled():
            return  # the user's own anomaly mode: theirs to keep, and it records lines anyway
        # Anomaly mode without NaN checks only records where each autograd node is created
        # (node.metadata["traceback_"]); it computes nothing differently, and the user's own
        # anomaly contexts opened inside it end as without us (_anomaly_window.py).
        if open_window():
            self._window = True

    def _close_window(self, loss: torch.Tensor | None = None) -> None:
        prev, self._window = self._window, None
        if prev:
            close_window()
        if (
            loss is not None
            and loss.grad_fn is not None
            and (prev is not None or torch.is_anomaly_enabled())
        ):
            for kind, sources in loss_op_sources(loss).items():
                known = self._loss_sources.setdefault(kind, [])
                known.extend(src for src in sources if src not in known)

    def _flag_hook(self, qual: str):
        assert self.ctx is not None
        state = self.ctx.state

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            # Runs per module per sampled step: one op per output, the check itself deferred
            # to the step's read-back (one isfinite over every module's values).
            if self._in_autopsy or state.validating or not torch.is_grad_enabled():
                return
            vals = self._module_vals
            n = len(vals)
            _finite_values(output, vals)
            if len(vals) > n:
                self._module_quals.extend([qual] * (len(vals) - n))
                if len(vals) - self._stacked >= _CHUNK:
                    self._stack_tail(vals)

        return hook

    def _stack_tail(self, vals: list[torch.Tensor]) -> None:
        """The last _CHUNK module values stacked into one 1-D tensor while they are fresh: on
        models of thousands of modules, 0-d tensors held to the step's read were stacked there
        from cold memory and kept the collector busy; the order (and each module's place) is
        the same. Left as they are where the chunk spans devices."""
        tail = vals[self._stacked :]
        try:
            with torch.no_grad():
                chunk = torch.stack(tail)
        except RuntimeError:  # several devices: read per device at the step's read
            self._stacked = len(vals)
            return
        del vals[self._stacked :]
        vals.append(chunk)
        self._stacked = len(vals)

    def _remove_step_hooks(self) -> None:
        if self._flags is not None:
            self._flags.off()
        for g in self._flag_groups:
            g.off()

    def on_evaluation(self, step: int, rec: Recorder) -> None:
        """A closure re-evaluation's backward (steps.py): the loss code's window closes."""
        self._close_window()

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        if self._window is not None or torch.is_anomaly_enabled():
            self._close_window(loss)  # a structural step's window, or the user's anomaly mode
        if not (loss.is_floating_point() and loss.numel() > 0):
            return
        if loss.numel() == 1 and _reads_free(loss):
            flag: torch.Tensor | bool = math.isfinite(loss.item())  # CPU: a read, no kernel
        else:
            flag = torch.isfinite(loss.detach()).all()  # on the device until the step's read
        self._loss_flags.append(flag)
        self._loss = loss
        if self._loss_culprits is None and _reads_free(loss) and not bool(flag):
            # On CPU the read is free, and before backward the loss graph is still intact:
            # recompute the ops that can make a finite input non-finite (log, div, sqrt, ...).
            self._loss_culprits = loss_graph_culprits(loss)

    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        ctx = self.ctx
        assert ctx is not None
        check_grads = sampled or self._every_step
        # The gradient probe's norms of these same gradients, when it took them (sampled
        # steps): only the gradients it did not measure get a norm here.
        taken = param_stats(ctx).take_grad_norms(opt)
        grads: list[torch.Tensor] = []
        names: list[str] = []
        known: list[torch.Tensor] = []
        if check_grads and taken is not None and taken.complete:
            # Every gradient this check reads, normed already: one 1-D tensor per device.
            grad_flags = [torch.isfinite(norms).all() for _, norms in taken.parts]
            check_grads = False
            known = [norms for _, norms in taken.parts]
        else:
            grad_flags = []
        shared = taken.by_id() if taken is not None and check_grads else {}
        if check_grads:
            for g in opt.param_groups:
                for p in g["params"]:
                    if p.grad is not None and p.grad.layout is torch.strided:
                        norm = shared.get(id(p))
                        if norm is not None:
                            known.append(norm)
                            continue
                        grads.append(p.grad)  # normed under no_grad: no detach
                        names.append(ctx.param_names.get(id(p), "?"))
        loss_flags = list(self._loss_flags) if not self._checked else []
        if grads:
            with torch.no_grad():
                norms = torch._foreach_norm(local_all(grads))
            known.extend(norms)
        if known and not grad_flags:
            for dev_norms in _by_device(known):
                grad_flags.append(torch.isfinite(torch.stack(dev_norms)).all())
        module_vals = self._module_vals if not self._checked else []
        module_quals = self._module_quals
        input_flags = self._input_flags if not self._checked else []
        self._checked = True
        all_flags = loss_flags + grad_flags + input_flags
        if not all_flags and not module_vals:
            return
        n_loss, n_grad = len(loss_flags), len(grad_flags)
        tensors = [f for f in all_flags if f.__class__ is not bool]
        if tensors and not (sampled or module_vals or input_flags) and _device_flags(tensors):
            # A device's flags: read later, with the next read's (no host sync on this step).
            self._pending.append(
                (step, all_flags, n_loss, n_grad, bool(known), self._loss_value(), True)
            )
            return
        self._read_pending(rec)
        if module_vals or tensors:
            host, mods = _read_with_values(all_flags, module_vals)  # the step's one host read
        else:
            host, mods = all_flags, []  # host bools already (a CPU loss): nothing to read
        loss_ok = all(host[:n_loss])
        grads_ok = all(host[n_loss : n_loss + n_grad])
        inputs_ok = all(host[n_loss + n_grad :]) or self._inputs_are_masks()
        judged = self._judge(step, rec, loss_ok, grads_ok, bool(loss_flags), bool(known), mods)
        if not judged and module_vals and (not all(mods) or not inputs_ok):
            first = next((q for q, ok in zip(module_quals, mods) if not ok), None)
            rec.record(step, NUMERICS_NONFINITE, ["activations"])
            if self._partial and inputs_ok:
                self._masked_in_group(step, rec, first)
            else:
                self._masked(step, rec, first if inputs_ok else "<input>")

    def _judge(
        self,
        step: int,
        rec: Recorder,
        loss_ok: bool,
        grads_ok: bool,
        loss_checked: bool,
        grads_checked: bool,
        mods: list[bool],
        applied: bool = False,
        loss: Any = None,
        late: bool = False,
    ) -> bool:
        """Record what step `step` checked; on a non-finite loss or gradient, the autopsy
        (True). `applied`: the step's optimizer.step() ran; `late`: a deferred read."""
        checked: dict[str, int] = {}
        if loss_checked:
            checked["loss"] = int(loss_ok)
        if grads_checked:
            checked["grads"] = int(grads_ok)
        if mods:
            checked["activations"] = int(all(mods))
        rec.record(step, NUMERICS_CHECKED, checked)
        if loss_ok and grads_ok:
            return False
        bad = (["loss"] if not loss_ok else []) + (["grads"] if not grads_ok else [])
        rec.record(step, NUMERICS_NONFINITE, bad)
        self._autopsy(
            step,
            rec,
            loss_ok=loss_ok,
            grads_ok=grads_ok if grads_checked else None,
            applied=applied,
            loss=loss,
            late=late,
        )
        return True

    def _loss_value(self) -> torch.Tensor | None:
        """The step's loss as a detached 0-d tensor (no copy, no read), for a deferred read."""
        loss = self._loss
        if loss is None or loss.numel() == 0:
            return None
        return loss.detach().reshape(-1)[0]

    def _read_pending(self, rec: Recorder) -> None:
        """Read every deferred step's flags in one transfer per device, and judge each step in
        order (its own step number: a finding's step stays exact)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        host = _read([f for entry in pending for f in entry[1]])
        pos = 0
        for step, flags, n_loss, n_grad, grads_checked, loss, applied in pending:
            vals = host[pos : pos + len(flags)]
            pos += len(flags)
            loss_ok = all(vals[:n_loss])
            grads_ok = all(vals[n_loss : n_loss + n_grad])
            self._judge(
                step, rec, loss_ok, grads_ok, n_loss > 0, grads_checked, [], applied, loss, True
            )

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        budget = self.ctx.budget if self.ctx is not None else None
        if not self._every_step_decided and budget is not None and budget.work is not None:
            # Counted, not timed: the same steps are checked in every run of the script.
            work = budget.work
            per_element = CHECK_PER_ELEMENT_S if work.device == "cpu" else 0.0
            cost = CHECK_PER_TENSOR_S * work.tensors + per_element * work.elements
            self._every_step = budget.every_step_affordable(cost, EVERY_STEP_MAX)
            self._every_step_decided = True
        if not self._checked and self._loss_flags:
            # No optimizer step ran (a GradScaler skipped it): the parameters are the ones the
            # loss was computed with, so the autopsy still replays faithfully.
            self._checked = True
            flags = list(self._loss_flags)
            stepped = bool(rec.timeline.get(step, "optim.step"))
            if not sampled and _device_flags(flags):
                n = len(flags)
                self._pending.append((step, flags, n, 0, False, self._loss_value(), stepped))
            else:
                self._read_pending(rec)
                if not all(_read(flags)):
                    rec.record(step, NUMERICS_NONFINITE, ["loss"])
                    self._autopsy(step, rec, loss_ok=False, grads_ok=None, applied=stepped)
        if self._pending and (sampled or step % READ_EVERY == 0):
            self._read_pending(rec)
        self._remove_step_hooks()
        self._close_window()
        self._loss = None

    def detach(self) -> None:
        if self._pending and self.ctx is not None:
            self.ctx.guard.call("probe numerics", self._read_pending, self.ctx.rec)
        self._remove_step_hooks()
        if self._flags is not None:
            self._flags.remove()
        for g in self._flag_groups:
            g.remove()
        self._close_window()
        for h in self._window_hooks:
            h.remove()
        self._window_hooks.clear()
        self._last.clear()
        self._loss = None
        super().detach()

    # -- the autopsy ----------------------------------------------------------------------
    def _autopsy(
        self,
        step: int,
        rec: Recorder,
        *,
        loss_ok: bool,
        grads_ok: bool | None,
        applied: bool,
        loss: Any = None,
        late: bool = False,
    ) -> None:
        """`loss`: the step's loss (0-d); `late`: its flags were read after the step (a
        device's deferred read)."""
        if self._autopsies >= MAX_AUTOPSIES:
            return
        ctx = self.ctx
        assert ctx is not None
        bad_params = _nonfinite_params(ctx.named_params(), grads=False)
        bad_grads = _nonfinite_params(ctx.named_params(), grads=True)
        if loss_ok and not bad_grads and not bad_params:
            return  # a gradient norm overflowed on finite values: not a NaN/Inf
        if bad_params and self._causes:
            return  # the weights went NaN after the first cause, already reported: a consequence
        if late:
            # Read after the step's update (a device's deferred flags): weights made
            # non-finite since are its consequence, and neither the weights nor the batch are
            # the step's any more, so nothing is replayed: the flags say what was measured.
            bad_params = []
        self._autopsies += 1
        facts: dict[str, Any] = {
            "loss_finite": loss_ok,
            "grads_finite": grads_ok,  # None: not checked on this step
            "applied": applied,
        }
        facts["nonfinite_params"] = bad_params[:16]
        facts["nonfinite_grads"] = bad_grads[:16]
        loss = loss if loss is not None else self._loss
        if loss is not None:
            with torch.no_grad():
                value = float(loss.detach().float().reshape(-1)[0])
            facts["loss"] = value if math.isfinite(value) else str(value)
        backward_only = loss_ok and not bad_params and bool(bad_grads)
        replay = (
            None if late else self._replay(out_grads=self._out_grads if backward_only else None)
        )
        facts["replayed"] = replay is not None
        event: dict[str, Any]
        if bad_params:
            # The weights themselves are already non-finite: an earlier update put it there.
            event = {
                "first": "param",
                "module": _module_of(bad_params[0]),
                "params": bad_params[:16],
            }
        elif replay is not None and replay.get("first_input"):
            event = {"first": "input", "module": "<input>", **replay["first_input"]}
        elif replay is not None and replay.get("first_module"):
            event = {"first": "activation", **replay["first_module"]}
        elif not loss_ok:
            culprits = self._loss_culprits or (
                loss_graph_culprits(self._loss) if self._loss is not None else []
            )
            event = {"first": "loss", "culprits": culprits}
            if culprits:
                event["op"] = culprits[0]["op"]
                lines = self._loss_sources.get(culprits[0]["node"], [])
                if lines:
                    event["source"] = lines[0]
                    event["candidate_sources"] = lines[:4]
            if replay is not None:
                event["model_output_finite"] = True
        else:
            # Loss and activations finite, gradients not: backward produced the NaN/Inf. In
            # backward order, the first layer reached is the last one in forward order.
            layer = bad_grads[-1] if bad_grads else None
            event = {
                "first": "grad",
                "module": _module_of(layer) if layer else None,
                "params": bad_grads[:16],
            }
        if replay is not None:
            event.setdefault("source", replay.get("source"))
            event.setdefault("op", replay.get("op"))
            if replay.get("module_order"):
                event["nonfinite_modules"] = replay["module_order"][:8]
        key = (event.get("first"), event.get("module"), event.get("op"))
        if key in self._causes:
            return
        if not event.get("source"):
            # No line yet (the loss's ops are traced on the structural steps; zero-code mode
            # has no batch to replay on step 1): report now, and let one later autopsy of the
            # same cause add the line.
            if key in self._sourceless:
                return
            self._sourceless.add(key)
        else:
            self._causes.add(key)
        rec.event(step, "nonfinite", **facts, **event)

    def _masked_in_group(self, step: int, rec: Recorder, first: str | None) -> None:
        """A non-finite output in the one group of modules checked: the module named must be
        the first of all (as with every module checked). The first time, the replay of this
        batch (every module hooked) names it; later, or without a replay, every module is
        checked on the next sampled step (`_full_next`), which names it as usual."""
        if first is None or self._masked_events >= MAX_MASKED_EVENTS:
            return
        if not self._masked_seen and self._autopsies < MAX_AUTOPSIES:
            replay = self._replay(trace_masks=True)
            order = (replay or {}).get("module_order")
            if order:
                self._masked(step, rec, order[0], replay)  # (it counts the autopsy)
                return
            if replay is not None:
                self._autopsies += 1
        if self._localised < MAX_LOCALISING:
            self._full_next = True
            self._localised += 1

    def _inputs_are_masks(self) -> bool:
        """Whether every non-finite floating input of the step's last forward is an additive
        mask: values 0 and -inf only (`nn.Transformer.generate_square_subsequent_mask`, a float
        key padding mask), -inf by design and turned into 0 by the softmax it is added under.
        Read only when an input flag was non-finite (a rare path: no cost on healthy steps)."""
        try:
            found = False
            with torch.no_grad():
                for args, kwargs, _, _ in self._last.values():
                    for t in iter_tensors((args, kwargs)):
                        if not (t.is_floating_point() and t.numel() and t.layout is torch.strided):
                            continue
                        t = t.detach()
                        if bool(torch.isfinite(t).all()):
                            continue
                        if not bool(((t == 0) | (t == float("-inf"))).all()):
                            return False
                        found = True
            return found
        except Exception:  # noqa: BLE001
            return False

    def _masked(
        self, step: int, rec: Recorder, first: str | None, replay: dict[str, Any] | None = None
    ) -> None:
        if first is None or first in self._masked_seen or self._masked_events >= MAX_MASKED_EVENTS:
            return
        self._masked_seen.add(first)
        self._masked_events += 1
        event: dict[str, Any] = {"module": first, "input": first == "<input>"}
        if replay is None:
            replay = self._replay(trace_masks=True) if self._autopsies < MAX_AUTOPSIES else None
        if replay is not None:
            self._autopsies += 1
            if replay.get("first_module"):
                event["fraction"] = replay["first_module"].get("fraction")
                event["op"] = replay["first_module"].get("op")
                event["source"] = replay["first_module"].get("source")
            if replay.get("mask"):
                event["mask"] = replay["mask"]
        rec.event(step, "nonfinite_masked", **event)

    def _replay(
        self, trace_masks: bool = False, out_grads: dict[int, torch.Tensor] | None = None
    ) -> dict[str, Any] | None:
        """Replay the last training batch on a deep copy of the model: the first module whose
        output is non-finite (forward order), the first op that made a finite input non-finite
        and, with `trace_masks`, the op that turned non-finite values back into finite ones."""
        ctx = self.ctx
        assert ctx is not None
        if not self._last:
            return None
        prefix, (args, kwargs, rng, cuda) = next(iter(self._last.items()))
        model = _replayable(ctx.models.get(prefix))
        if model is None:
            return None
        # The replayed forward publishes its output too: the run keeps the user's.
        saved_output = ctx.state.model_output
        self._in_autopsy = True
        try:
            devices = [cuda[0]] if cuda is not None else []
            with torch.random.fork_rng(devices=devices):
                torch.set_rng_state(rng)
                if cuda is not None:
                    torch.cuda.set_rng_state(cuda[1], cuda[0])
                twin = _copy_without_hooks(model)
                if twin is None:
                    return None
                return _Tracer(twin, prefix, trace_masks).run(args, kwargs, out_grads)
        finally:
            self._in_autopsy = False
            ctx.bus.emit(Event.MODEL_OUTPUT, saved_output)


def loss_op_sources(root: torch.Tensor, limit: int = 4096) -> dict[str, list[str]]:
    """User lines that created the loss graph's non-finite-prone ops (log, div, sqrt, ...), read
    from the anomaly-mode tracebacks of the nodes; nodes without one (created outside the
    window, e.g. in the model's forward) are skipped. Breadth-first, at most `limit` nodes."""
    out: dict[str, list[str]] = {}
    seen: set[int] = set()
    frontier = deque([root.grad_fn])
    while frontier and len(seen) < limit:
        node = frontier.popleft()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if not _has_traceback(node):
            # Created before the window opened, as was every node it reads: the walk stops
            # here instead of visiting the model's whole backward graph (4,096 nodes and
            # ~0.6 s a structural step on a 2,000-tensor model).
            continue
        kind = type(node).__name__
        if kind in _RECOMPUTE:
            src = node_source(node)
            if src and src not in out.setdefault(kind, []) and len(out[kind]) < 8:
                out[kind].append(src)
        frontier.extend(fn for fn, _ in node.next_functions)
    return out


def _has_traceback(node: object) -> bool:
    try:
        return bool(node.metadata.get("traceback_"))  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return False


class _Tracer(TorchFunctionMode):
    """Replays a forward pass, checking every op's output for non-finite values."""

    def __init__(self, model: torch.nn.Module, prefix: str, trace_masks: bool) -> None:
        super().__init__()
        self.model = model
        self.prefix = prefix
        self.trace_masks = trace_masks
        self.stack: list[str] = []
        self.first_op: dict[str, Any] | None = None
        self.first_module: dict[str, Any] | None = None
        self.module_order: list[str] = []
        self.mask: dict[str, Any] | None = None

    def run(
        self, args: Any, kwargs: Any, out_grads: dict[int, torch.Tensor] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        bad_inputs = [t for t in iter_tensors((args, kwargs)) if not _all_finite(t)]
        if bad_inputs:
            t = bad_inputs[0]
            out["first_input"] = {"fraction": _bad_fraction(t), "shape": list(t.shape)}
        handles = []
        for name, m in self.model.named_modules():
            qual = f"{self.prefix}{name}" if name else (self.prefix.rstrip(".") or "<model>")
            handles.append(m.register_forward_pre_hook(self._enter(qual)))
            handles.append(m.register_forward_hook(self._exit(qual)))
        anomaly = (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())
        try:
            # Anomaly mode records each node's forward traceback, for the backward replay.
            torch.set_anomaly_enabled(True, False)
            # The user's forward as in their run: their tensor subclasses on (our code runs
            # with them off, _mode_stack.UsersOff); the tracer's own reads below turn them off.
            with self, TorchFunctionOn():
                output = self.model(*args, **kwargs)
        finally:
            torch.set_anomaly_enabled(*anomaly)
            for h in handles:
                h.remove()
        if out_grads:
            out.update(_backward_replay(output, out_grads))
        if self.first_module:
            out["first_module"] = self.first_module
        out["module_order"] = self.module_order
        if self.first_op:
            out["op"] = self.first_op["op"]
            out["source"] = self.first_op["source"]
        elif out.get("backward_op"):
            out["op"] = out["backward_op"]
            out["source"] = out.get("backward_source")
        if self.mask:
            out["mask"] = self.mask
        return out

    def _enter(self, qual: str):
        def hook(_m: Any, _args: Any) -> None:
            self.stack.append(qual)

        return hook

    def _exit(self, qual: str):
        def hook(_m: Any, _args: Any, output: Any) -> None:
            if self.stack and self.stack[-1] == qual:
                self.stack.pop()
            with UsersOff():
                bad = [t for t in iter_tensors(output) if not _all_finite(t)]
                if bad and qual not in self.module_order:
                    self.module_order.append(qual)
                    first_op = self.first_op
                    if (
                        self.first_module is None
                        and first_op is not None
                        and first_op["module"] != qual
                        and not self._inside(qual)
                    ):
                        # The op that made it ran in a parent's own code (between submodules): that
                        # parent, op and line are the first place; `qual` only received the values.
                        self.first_module = {
                            "module": first_op["module"] or (self.prefix.rstrip(".") or "<model>"),
                            "fraction": _bad_fraction(bad[0]),
                            "op": first_op["op"],
                            "source": first_op["source"],
                            "received_by": qual,
                        }
                    if self.first_module is None:
                        op = (
                            self.first_op
                            if self.first_op and self.first_op["module"] == qual
                            else None
                        )
                        if op is None and self.first_op is not None and self._inside(qual):
                            op = self.first_op
                        self.first_module = {
                            "module": qual,
                            "fraction": _bad_fraction(bad[0]),
                            "op": op["op"] if op else None,
                            "source": op["source"] if op else None,
                        }

        return hook

    def _inside(self, qual: str) -> bool:
        assert self.first_op is not None
        inner = self.first_op["module"] or ""
        return qual in ("<model>", self.prefix.rstrip(".")) or inner.startswith(qual + ".")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.first_op is not None and (self.mask is not None or not self.trace_masks):
            return result
        try:
            with UsersOff():  # the user's subclasses and modes do not see our reads
                outs = [t for t in iter_tensors(result) if t.is_floating_point()]
                if not outs:
                    return result
                ins = [t for t in iter_tensors((args, kwargs)) if t.is_floating_point()]
                outs_ok = all(_all_finite(t) for t in outs)
                if self.first_op is None and not outs_ok and all(_all_finite(t) for t in ins):
                    self.first_op = {
                        "op": _op_name(func),
                        "source": user_source(skip=2),
                        "module": self.stack[-1] if self.stack else None,
                    }
                elif self.trace_masks and self.mask is None and outs_ok and ins:
                    bad_in = [t for t in ins if not _all_finite(t)]
                    if bad_in and _op_name(func) in _MASKING_OPS:
                        self.mask = {
                            "op": _op_name(func),
                            "source": user_source(skip=2),
                            "module": self.stack[-1] if self.stack else None,
                            **_grad_through(func, args, kwargs, bad_in[0]),
                        }
        except Exception:  # noqa: BLE001  (a diagnostic must not break the replay)
            pass
        return result


def _grad_through(func: Any, args: Any, kwargs: Any, x: torch.Tensor) -> dict[str, Any]:
    """Measure the gradient the masking op passes back to its non-finite input, on a detached
    stand-in: d(sum(out))/dx per element, for the finite and the replaced elements."""
    try:
        leaf = x.detach().clone().requires_grad_(True)
        swapped = [leaf if a is x else a for a in args]
        with torch.enable_grad():
            out = func(*swapped, **kwargs)
            (g,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
        if g is None:
            return {}
        finite = torch.isfinite(x)
        fin = g[finite]
        bad = g[~finite]
        return {
            "grad_finite_elements": float(fin.mean()) if fin.numel() else None,
            "grad_masked_elements": float(bad.mean()) if bad.numel() else None,
            "masked_fraction": float((~finite).float().mean()),
        }
    except Exception:  # noqa: BLE001
        return {}


def loss_graph_culprits(loss: torch.Tensor, limit: int = 2000) -> list[dict[str, Any]]:
    """Ops in the loss's autograd graph whose output is non-finite while their input is finite,
    recomputed from the graph's saved tensors (only while the graph is intact, before backward);
    after backward only the op names of the candidates are known."""
    found: list[dict[str, Any]] = []
    for node in graph_nodes(loss, limit):
        kind = type(node).__name__
        entry = _RECOMPUTE.get(kind)
        if entry is not None:
            op, fn, input_attr = entry
            try:
                with torch.no_grad():
                    value = fn(node)
                    inp = getattr(node, input_attr) if input_attr else None
                    if not _all_finite(value) and (inp is None or _all_finite(inp)):
                        found.append(
                            {
                                "op": op,
                                "node": kind,
                                "fraction": _bad_fraction(value),
                                "measured": True,
                            }
                        )
            except Exception:  # noqa: BLE001  (saved tensors already freed)
                found.append({"op": op, "node": kind, "measured": False})
    measured = [f for f in found if f["measured"]]
    return measured or found


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name


def _reads_free(t: torch.Tensor) -> bool:
    """Whether reading `t` on the host waits for no device (CPU, unless a test says not)."""
    return CPU_READS_FREE and t.device.type == "cpu"


def _device_flags(flags: list[Any]) -> bool:
    """Whether reading these flags would synchronise the host with a device."""
    return any(not isinstance(f, bool) and not _reads_free(f) for f in flags)


def _by_device(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    out: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        out.setdefault(t.device, []).append(t)
    return list(out.values())


_CHUNK = 512  # module values stacked together as they come (see _stack_tail)
_MINMAX_FROM = 1024  # elements: below, isfinite().all() is as fast
_MINMAX_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _finite_flags(tensors: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    with torch.no_grad():
        for t in tensors:
            if (
                (t.is_floating_point() or t.is_complex())
                and t.numel()
                and t.layout is torch.strided
            ):
                if t.numel() > _MINMAX_FROM and t.dtype in _MINMAX_DTYPES:
                    # One reading pass, no bool tensor: min and max propagate NaN and show
                    # an inf, so both are finite exactly when every value is (~8x faster than
                    # isfinite().all() on a (8, 64, 512) activation on CPU).
                    lo, hi = torch.aminmax(t.detach())
                    out.append(torch.isfinite(torch.stack((lo, hi))).all())
                else:
                    out.append(torch.isfinite(t.detach()).all())
            if len(out) >= 4:
                break
    return out


def _finite_values(output: Any, out: list[torch.Tensor]) -> None:
    """Append to `out` 0-d tensors that are all finite exactly when the first 4 floating
    tensors of a module's output are: each one's min and max (NaN propagates, an inf shows in
    one of them), one op per tensor; the isfinite is left to the step's read-back."""
    tensors = (output,) if isinstance(output, torch.Tensor) else iter_tensors(output)
    n = 0
    for t in tensors:
        if not (t.is_floating_point() or t.is_complex()) or not t.numel():
            continue
        if t.layout is not torch.strided:
            continue
        x = t.detach()
        if x.is_complex():
            x = torch.view_as_real(x.resolve_conj())
        if x.dtype in _MINMAX_DTYPES:
            out.extend(torch.aminmax(x))
        else:  # 1 where finite, inf where not
            out.append(torch.isfinite(x).all().float().reciprocal())
        n += 1
        if n >= 4:
            break


def _read_with_values(
    flags: list[torch.Tensor | bool], values: list[torch.Tensor]
) -> tuple[list[bool], list[bool]]:
    """`_read(flags)`, and whether each element of `values` (0-d or 1-d tensors, in order) is
    finite, in one transfer per device."""
    out_flags = [True] * len(flags)
    sizes = [1 if v.dim() == 0 else v.numel() for v in values]
    starts = [0] * len(values)
    for i in range(1, len(values)):
        starts[i] = starts[i - 1] + sizes[i - 1]
    out_vals = [True] * (starts[-1] + sizes[-1] if values else 0)
    by_dev: dict[torch.device, tuple[list[int], list[int]]] = {}
    for i, f in enumerate(flags):
        if isinstance(f, bool):
            out_flags[i] = f
        else:
            by_dev.setdefault(f.device, ([], []))[0].append(i)
    for i, v in enumerate(values):
        by_dev.setdefault(v.device, ([], []))[1].append(i)
    with torch.no_grad():
        for fi, vi in by_dev.values():
            parts = []
            if fi:
                parts.append(torch.stack([flags[i].reshape(()) for i in fi]).bool())  # type: ignore[union-attr]
            if vi:
                vs = [values[i].reshape(-1) for i in vi]
                parts.append(torch.isfinite(vs[0] if len(vs) == 1 else torch.cat(vs)))
            read = (parts[0] if len(parts) == 1 else torch.cat(parts)).tolist()
            for i, v in zip(fi, read[: len(fi)]):
                out_flags[i] = bool(v)
            pos = len(fi)
            for i in vi:
                n, start = sizes[i], starts[i]
                out_vals[start : start + n] = [bool(v) for v in read[pos : pos + n]]
                pos += n
    return out_flags, out_vals


def _all_finite(t: torch.Tensor) -> bool:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return True
    with torch.no_grad():
        return bool(torch.isfinite(t.detach()).all())


def _bad_fraction(t: torch.Tensor) -> float:
    with torch.no_grad():
        return round(float((~torch.isfinite(t.detach())).float().mean()), 6)


def _read(flags: list[torch.Tensor | bool]) -> list[bool]:
    """Read 0-d flags with one transfer per device (one in practice); host bools as they are."""
    positions: dict[torch.device, list[int]] = {}
    out = [True] * len(flags)
    for i, f in enumerate(flags):
        if isinstance(f, bool):
            out[i] = f
        else:
            positions.setdefault(f.device, []).append(i)
    for idx in positions.values():
        values = torch.stack([flags[i].reshape(()) for i in idx]).tolist()
        for i, v in zip(idx, values):
            out[i] = bool(v)
    return out


def _nonfinite_params(named: list[tuple[str, torch.nn.Parameter]], grads: bool) -> list[str]:
    names, tensors = [], []
    for n, p in named:
        t = p.grad if grads else p
        if t is not None and t.layout is torch.strided and t.is_floating_point():
            names.append(n)
            tensors.append(t.detach())
    if not tensors:
        return []
    # Autopsy only (rare): exact per-tensor checks, a norm could overflow on finite values.
    flags = [_all_finite(t) for t in tensors]
    return [n for n, ok in zip(names, flags) if not ok]


def _module_of(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else "<model>"


def _replayable(model: torch.nn.Module | None) -> torch.nn.Module | None:
    """The module the replay may run without talking to other processes, or None.

    A DistributedDataParallel (or DataParallel) wrapper's forward syncs buffers with the other
    ranks: replaying it on one rank issued a collective the others never matched and killed
    the job. The replay runs the wrapped module itself, and not at all when that module still
    holds a SyncBatchNorm, whose forward in training is a collective too.
    """
    while model is not None and isinstance(
        model,
        torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel,
    ):
        model = model.module
    if model is None:
        return None
    if any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()):
        return None
    return model


def _copy_without_hooks(model: torch.nn.Module) -> torch.nn.Module | None:
    """_hooks.copy_without_hooks, or None if the model cannot be copied (a lock or a
    generator as an attribute): the autopsy then reports from what was measured."""
    try:
        return copy_without_hooks(model)
    except Exception:  # noqa: BLE001
        return None


def _backward_replay(output: Any, out_grads: dict[int, torch.Tensor]) -> dict[str, Any]:
    """Backward of the replayed model alone, fed the gradient the user's loss sent into its
    outputs, under `detect_anomaly(check_nan=True)`: torch stops at the first backward op that
    returns NaN and reports the forward line that created it."""
    tensors = list(iter_tensors(output))
    pairs = [(tensors[i], g) for i, g in out_grads.items() if i < len(tensors)]
    pairs = [(t, g) for t, g in pairs if t.requires_grad and t.shape == g.shape]
    if not pairs:
        return {}
    anomaly = (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.set_anomaly_enabled(True, True)
        try:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        except RuntimeError as exc:
            m = re.search(r"Function '(\w+)' returned nan", str(exc))
            found: dict[str, Any] = {"backward_op": m.group(1) if m else None}
            for w in caught:
                frames = str(w.message).splitlines()
                src = user_line_in_traceback(frames)
                if src:
                    found["backward_source"] = src
                    break
            return found
        finally:
            torch.set_anomaly_enabled(*anomaly)
    return {}


def keep_output_grads(output: Any) -> dict[int, torch.Tensor]:
    """A dict that the coming backward fills with dL/d output (references, small outputs
    only), by output index. The hooks return None: the gradient is not changed."""
    grads: dict[int, torch.Tensor] = {}
    for i, t in enumerate(iter_tensors(output)):
        if t.requires_grad and t.numel() <= OUT_GRAD_MAX_NUMEL:
            t.register_hook(lambda g, i=i: grads.__setitem__(i, g))
    return grads

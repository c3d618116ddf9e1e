"""Capture the first training batches for the experiments on a copy (issue 17, experiments/).

Off unless the experiments are enabled (`traindoctor check`, `TRAINDOCTOR_EXPERIMENTS=1`):
then nothing is hooked and this probe costs nothing.

When enabled, with one watched model: at attach, the model's weights (a CPU copy of its state
dict, when memory allows) and the primary optimizer's class and param groups' settings; until
the batches are captured, a forward pre/post hook on the model (the last training call's inputs
and output tensors, references) and a listener on the standard losses (loss_inputs.py's shared
patch): the first loss call of a step whose input is a tensor of that output, a view or a cast
of one, or a softmax/sigmoid of one (`F.cross_entropy(model(x).softmax(1), y)`, replayed as
such), is that step's batch (inputs, target and the loss's other arguments cloned). One batch a
step, up to MAX_BATCHES and BATCH_BYTES; the hooks go at the end of the step after the last.
Also kept: each module's mode in the first captured forward, and the first backward's loss at
that step (the fix trials replay the run only when it is the captured call, or 1/k of it).
On those steps (MAX_BATCHES at most) the loss code from the forward's end to the backward is
recorded too (experiments/loss_code.py, a mode that changes no call), on the step's batch: the
TD301/TD302 trials replay it with one op swapped; with no standard loss call captured (a loss
written by hand) the step's inputs are kept for that replay alone (Setup.traced).

At close, `run_experiments` runs the recipe (experiments/recipe.py) on the first batch and
records one `experiment` event per experiment; a script whose loss is custom code (no standard
loss call on the model's output) gets one event that says so. After the final diagnosis,
`run_trials` replays the error findings' fixes on all the batches (experiments/trials.py).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from .. import _patches, experiments
from .._source import user_source
from .base import AttachContext, Probe, Recorder, iter_tensors
from .loss_inputs import add_loss_listener, remove_loss_listener

MAX_BATCHES = 8  # batches kept for the fix trials (the first one is the recipe's)
BATCH_BYTES = 64 * 2**20  # the clones of the batches after the first stop at this size
# The probability ops a script may apply to the model's output before the loss, replayed as such.
_SQUASH = {
    "SoftmaxBackward0": "softmax",
    "LogSoftmaxBackward0": "log_softmax",
    "SigmoidBackward0": "sigmoid",
}


def _arg(args: tuple, kwargs: dict, i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


class CaptureProbe(Probe):
    name = "capture"
    provides: ClassVar[tuple[str, ...]] = ()
    provides_events: ClassVar[tuple[str, ...]] = ("experiment", "fix_trial")

    def __init__(self) -> None:
        super().__init__()
        self.setup: Any = None  # experiments.runner.Setup once attached with experiments on
        self.skipped: str | None = None  # why nothing can be replayed
        self._pending: tuple[tuple, dict] | None = None
        self._outputs: list[torch.Tensor] = []
        self._listening = False
        self._training = True
        self._autocast: tuple[str, str] | None = None
        self._in_forward = False
        self._internal: dict[str, Any] | None = None
        self._unmatched: list[str] = []
        self._done = False
        self._bytes = 0  # the cloned batches after the first
        self._stopped = False  # a later batch differed from the first: none captured after
        self._index: dict[int, int] = {}  # id(param) -> its index in model.parameters()
        self._clips = _ClipWatch(self)
        # The first batch's loss call's value and the first backward's loss at its step: the
        # trials replay the run only when they agree (no terms written by hand added).
        self._values: dict[str, torch.Tensor | None] = {"replayed": None, "backward": None}
        # step -> [training forwards, standard loss calls on tensors that require grad]
        self._calls: dict[int, list[int]] = {}
        self._rec: Recorder | None = None
        # The loss code of a captured step, recorded from the forward's end to the backward
        # (experiments/loss_code.py: the TD301/TD302 trials replay it with the op swapped).
        self._recorder: Any = None
        self._trace_bytes = 0
        self._traces = 0  # loss codes recorded (MAX_BATCHES at most)

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec  # the fix trials' `fix_trial` events, at close
        if not experiments.enabled():
            self.retired = True  # no event reaches it: free
            return
        from ..experiments.runner import Setup, memory_short

        models = {p: m for p, m in ctx.models.items() if isinstance(m, torch.nn.Module)}
        if not models:
            self.skipped = "no nn.Module is watched (tensors trained by hand): nothing to copy"
            return
        if len(ctx.models) != 1:
            self.skipped = f"{len(ctx.models)} models watched: the experiments replay one model"
            return
        prefix, model = next(iter(models.items()))
        if prefix in ctx.compiled or isinstance(
            model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel
        ):
            self.skipped = "a compiled or DDP-wrapped model is not replayed"
            return
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # A replayed forward of a sharded or synchronized model is a collective the other
            # ranks never join (FSDP, SyncBatchNorm): no experiment in a multi-process job.
            self.skipped = "a distributed job: the experiments run in single-process runs only"
            return
        short = memory_short(model)
        if short is not None:
            self.skipped = short
            return
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        setup = Setup(model=model, init_state=state, optimizer_class=None)
        index = {id(p): i for i, p in enumerate(model.parameters())}
        for oi, opt in enumerate(ctx.optimizers):
            groups, keys = [], []
            for gi, g in enumerate(opt.param_groups):
                ids = [index[id(p)] for p in g["params"] if id(p) in index]
                if ids:
                    settings = {k: _plain(v) for k, v in g.items() if k != "params"}
                    groups.append((ids, settings))
                    keys.append(f"opt{oi}/group{gi}")  # its lr per step (optim.lr)
            if groups:
                setup.optimizer_class = type(opt)
                setup.groups = groups
                setup.lr_keys = keys
                setup.defaults = {k: _plain(v) for k, v in opt.defaults.items()}
                break
        self.setup = setup
        self._index = index
        _patches.add_amp_listener(self._clips)
        self.handles.append(
            model.register_forward_pre_hook(ctx.hook("probe capture", self._pre), with_kwargs=True)
        )
        self.handles.append(model.register_forward_hook(ctx.hook("probe capture", self._post)))
        add_loss_listener(self)
        self._listening = True

    def _pre(self, module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        # A training forward: grad enabled, not inside doc.validating() (a model left in eval
        # mode by mistake, TD402, is still captured, and replayed in that mode).
        ctx = self.ctx
        if ctx is None or self._done or not torch.is_grad_enabled() or ctx.state.validating:
            self._pending = None
            return
        self._count(ctx.state.step, 0)
        if self._recorder is not None:
            self._end_trace("a second forward of the model before the backward")
        if not self._wants(ctx.state.step):
            self._pending = None  # this step's batch is kept: no output held until the next
            return
        self._pending = (args, kwargs)
        self._training = module.training
        self._autocast = _autocast_now(module)  # replayed the same (experiments/runner.py)
        if self.setup.batch is None:
            # Each module's mode in the first captured forward (a BatchNorm frozen on purpose
            # stays in eval mode in the trials' replay).
            self.setup.modes = {n: m.training for n, m in module.named_modules()}
        self._outputs = []
        self._in_forward = True
        self._internal = None

    def _post(self, _module: torch.nn.Module, _args: Any, output: Any) -> None:
        self._in_forward = False
        if self._pending is None:
            return
        self._outputs = list(iter_tensors(output))
        self._start_trace(_module)
        internal, self._internal = self._internal, None
        if internal is not None and "out" in internal and self._wants(internal["step"]):
            # The loss was computed inside forward() and returned (a model that takes its
            # labels, as Hugging Face models do): the replay reads it from the output.
            for i, out in enumerate(self._outputs):
                if out is internal["out"]:
                    first = self.setup.batch is None
                    self._capture(internal, i, out, None, None, internal=True)
                    if first and self.setup.batch is not None:
                        self._values["replayed"] = out.detach()
                    break

    # Called by loss_inputs' shared patch for every standard loss call.
    def loss_call(self, fn: str, args: tuple, kwargs: dict) -> Any:
        ctx = self.ctx
        if ctx is None or self.setup is None or ctx.state.closed or ctx.state.validating:
            return None
        batch = self.setup.batch
        if not self._done and torch.is_grad_enabled():
            inp = _arg(args, kwargs, 0, "input")
            if isinstance(inp, torch.Tensor) and inp.requires_grad:
                self._count(ctx.state.step, 1)
        if batch is not None and not self._wants(ctx.state.step):
            # Another loss before the captured call's backward: the step backpropagates more
            # than that call. After it, it is the next micro-batch's (accumulation), not more.
            if (
                ctx.state.step == batch.step
                and torch.is_grad_enabled()
                and self._values.get("backward") is None
            ):
                inp = _arg(args, kwargs, 0, "input")
                if isinstance(inp, torch.Tensor) and inp.requires_grad:
                    batch.several_losses = True
            return None
        t0 = time.perf_counter()
        try:
            return ctx.guard.call("probe capture", self._match, ctx, fn, args, kwargs)
        finally:
            ctx.budget.spend(time.perf_counter() - t0)

    def _match(self, ctx: AttachContext, fn: str, args: tuple, kwargs: dict) -> Any:
        inp = _arg(args, kwargs, 0, "input")
        tgt = _arg(args, kwargs, 1, "target")
        if not isinstance(inp, torch.Tensor) or not isinstance(tgt, torch.Tensor):
            return None
        if not torch.is_grad_enabled() or not inp.requires_grad or tgt.requires_grad:
            return None
        if self._pending is not None and self._in_forward:
            if self._internal is not None:
                return None  # the first loss computed inside forward() is the one kept
            internal = self._internal = {
                "fn": fn,
                "args": args,
                "kwargs": kwargs,
                "input_shape": tuple(inp.shape),
                "step": ctx.state.step,
                "source": user_source(skip=2),
            }
            return lambda out: internal.__setitem__("out", out)
        if self._pending is None or not self._outputs:
            self._note_unmatched(fn)
            return
        found = None
        for i, out in enumerate(self._outputs):
            if out is inp:
                found = (i, out, None)
                break
        if found is None:
            ptr = inp.untyped_storage().data_ptr()
            for i, out in enumerate(self._outputs):
                if out.requires_grad and out.untyped_storage().data_ptr() == ptr:
                    view = (tuple(inp.shape), tuple(inp.stride()), inp.storage_offset())
                    found = (i, out, view)
                    break
        cast = squash = None
        if found is None:
            # `F.cross_entropy(model(x).softmax(1), y)`: a probability op on an output, outside
            # the model, replayed as such (the fix trial of TD506 drops it).
            node = inp.grad_fn
            op = _SQUASH.get(node.name()) if node is not None else None
            src = node.next_functions[0][0] if op and node.next_functions else None
            for i, out in enumerate(self._outputs if src is not None else ()):
                if out.grad_fn is src and out.shape == inp.shape:
                    squash = (op, None if op == "sigmoid" else int(node._saved_dim))
                    found = (i, out, None)
                    break
        if found is None:
            # `model(x).float()` (mixed precision), possibly viewed after: a dtype cast of an
            # output, replayed as the same cast.
            base = inp if inp._base is None else inp._base
            node = base.grad_fn
            if node is not None and node.name() == "ToCopyBackward0":
                src = node.next_functions[0][0] if node.next_functions else None
                for i, out in enumerate(self._outputs):
                    if out.grad_fn is not None and out.grad_fn is src and out.shape == base.shape:
                        cast = str(base.dtype).removeprefix("torch.")
                        view = None
                        if inp is not base:
                            view = (tuple(inp.shape), tuple(inp.stride()), inp.storage_offset())
                        found = (i, out, view)
                        break
        if found is None:
            self._note_unmatched(fn)
            return None
        i, out, view = found
        call = {
            "fn": fn,
            "args": args,
            "kwargs": kwargs,
            "input_shape": tuple(inp.shape),
            "step": ctx.state.step,
            "source": user_source(skip=2),
            "autocast": _autocast_now(inp) is not None,
        }
        first = self.setup.batch is None
        self._capture(call, i, out, view, cast, squash=squash)
        if first and self.setup.batch is not None:
            return self._keep_value
        return None

    def _start_trace(self, model: torch.nn.Module) -> None:
        """Record this step's loss code until its backward (a step whose batch is wanted)."""
        from ..experiments.loss_code import LossRecorder

        if self._traces >= MAX_BATCHES:
            return  # a script whose loss is never captured is not recorded at every step
        self._traces += 1
        recorder = LossRecorder()
        if self.setup.batch is None:
            recorder.check = True  # the first trace is checked against the run's loss
            recorder.rng = torch.get_rng_state()  # with the loss code's own draws
        try:
            recorder.start(self._outputs, model)
        except Exception:  # noqa: BLE001  (no trace: its trial says so)
            recorder.stop()
            return
        self._recorder = recorder

    def _end_trace(self, reason: str | None, root: torch.Tensor | None = None) -> None:
        """The recorder off the mode stack; its trace (or why there is none) on the batch
        captured at this step."""
        from ..experiments.loss_code import NotReplayable

        recorder, self._recorder = self._recorder, None
        recorder.stop()
        ctx = self.ctx
        batches = self.setup.batches if self.setup is not None else []
        batch = batches[-1] if batches else None
        if ctx is not None and batch is None and reason is None and root is not None:
            batch = self._traced_batch(ctx.state.step)  # a loss written by hand
        if ctx is None or batch is None or batch.step != ctx.state.step or batch.trace:
            recorder.abort("no batch")
            return
        if reason is not None or root is None:
            recorder.abort(reason or "no backward")
            batch.trace = recorder.reason
            return
        try:
            code = recorder.finish(root)
            self._trace_bytes += code.nbytes()
            # The traces' copies (targets, masks, the first step's output) kept within a bound:
            # later steps' loss code is then not kept (the TD301/TD302 trials replay fewer).
            batch.trace = code
            if self._trace_bytes > BATCH_BYTES:
                batch.trace = f"the loss code's copies pass the {BATCH_BYTES >> 20} MiB kept"
        except NotReplayable as exc:
            batch.trace = str(exc)
        except Exception as exc:  # noqa: BLE001
            batch.trace = f"the loss code could not be recorded ({type(exc).__name__})"

    def _traced_batch(self, step: int) -> Any:
        """This step's batch for its recorded loss code alone, when no standard loss call on
        the output was captured (a loss written by hand): the TD301/TD302 trials replay it."""
        from ..experiments.runner import Batch, clone_tree

        setup = self.setup
        if setup is None or setup.batch is not None or self._pending is None:
            return None
        if len(setup.traced) >= MAX_BATCHES or self._bytes >= BATCH_BYTES:
            return None
        args, kwargs = self._pending
        batch = Batch(
            args=clone_tree(tuple(args)),
            kwargs=clone_tree(dict(kwargs)),
            loss_fn="",  # no standard loss call: replayed through `trace` only
            loss_args=(),
            loss_kwargs={},
            target=torch.empty(0),
            out_index=0,
            view=None,
            out_layout=((), (), 0),
            step=step,
            train_mode=self._training,
            autocast=self._autocast,
        )
        self._bytes += _nbytes((batch.args, batch.kwargs))
        setup.traced.append(batch)
        return batch

    def _keep_value(self, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            self._values["replayed"] = out.detach()

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        if self._recorder is not None:
            self._end_trace(None, loss)  # the loss before any GradScaler scale: the replay scales
        batch = self.setup.batch if self.setup is not None else None
        if batch is not None and step == batch.step and self._values["backward"] is None:
            self._values["backward"] = loss.detach()

    def _capture(
        self,
        call: dict[str, Any],
        i: int,
        out: torch.Tensor,
        view: Any,
        cast: str | None,
        internal: bool = False,
        squash: tuple[str, int | None] | None = None,
    ) -> None:
        from ..experiments.runner import Batch, clone_tree

        assert self._pending is not None
        model_args, model_kwargs = self._pending
        args, kwargs = call["args"], call["kwargs"]
        # The model's inputs that hold the labels (`model(x, targets)`): never zeroed.
        ptr = _arg(args, kwargs, 1, "target").untyped_storage().data_ptr()
        labels = [
            k
            for k, a in [*enumerate(model_args), *model_kwargs.items()]
            if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == ptr
        ]
        names = ("input", "target")
        first = self.setup.batch
        if first is not None:
            # A later step's batch, for the fix trials: the same call on the same output.
            same = (call["fn"], i, internal, cast, squash, view is None)
            if same != (
                first.loss_fn,
                first.out_index,
                first.internal,
                first.cast,
                first.squash,
                first.view is None,
            ):
                self._pending, self._outputs = None, []
                self._stopped = True  # replayed as one kind of batch, or not at all
                return
        batch = Batch(
            args=clone_tree(tuple(model_args)),
            kwargs=clone_tree(dict(model_kwargs)),
            loss_fn=call["fn"],
            loss_args=clone_tree(tuple(args[2:])),
            loss_kwargs=clone_tree({k: v for k, v in kwargs.items() if k not in names}),
            target=_arg(args, kwargs, 1, "target").detach().clone(),
            out_index=i,
            view=view,
            out_layout=(tuple(out.shape), tuple(out.stride()), out.storage_offset()),
            step=call["step"],
            source=call["source"],
            train_mode=self._training,
            cast=cast,
            internal=internal,
            input_shape=call["input_shape"],
            labels=labels,
            squash=squash,
            autocast=self._autocast,
            loss_autocast=bool(call.get("autocast")) or internal,
        )
        if first is None:
            self.setup.batch = batch
        else:
            self._bytes += _nbytes((batch.args, batch.kwargs, batch.target, batch.loss_args))
        self.setup.batches.append(batch)
        self._pending, self._outputs = None, []

    def _wants(self, step: int) -> bool:
        """Whether a batch of this step is still to be captured (one a step, while room)."""
        batches = self.setup.batches if self.setup is not None else []
        if self._done or self._full:
            return False
        return not batches or step > batches[-1].step

    @property
    def _full(self) -> bool:
        batches = self.setup.batches if self.setup is not None else []
        return self._stopped or len(batches) >= MAX_BATCHES or self._bytes >= BATCH_BYTES

    def _count(self, step: int, which: int) -> None:
        if step in self._calls or len(self._calls) < 4 * MAX_BATCHES:
            self._calls.setdefault(step, [0, 0])[which] += 1

    def loss_parts(self) -> dict[str, Any] | None:
        """At the first captured batch's step: the training forwards, the standard loss calls,
        the replayed loss call's value and the first backward's loss (floats, or None)."""
        batch = self.setup.batch if self.setup is not None else None
        if batch is None or batch.step not in self._calls:
            return None
        forwards, losses = self._calls[batch.step]
        # Micro-batches a step (`loss / accum_steps`): the most forwards of a captured step
        # (the first step's count can miss the forwards before a zero-code attach).
        micro = max(c[0] for c in self._calls.values())
        values = {
            k: float(v.float().mean()) if v is not None and v.numel() >= 1 else None
            for k, v in self._values.items()
        }
        return {
            "forwards": forwards,
            "losses": losses,
            "micro_batches": micro,
            "fn": batch.loss_fn,
            **values,
        }

    def _note_unmatched(self, fn: str) -> None:
        if len(self._unmatched) < 8:
            self._unmatched.append(fn)

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self._recorder is not None:
            self._end_trace("no backward after the forward in its step")
        batch = self.setup.batch if self.setup is not None else None
        if batch is None or self._done:
            return
        # Full, or a window twice MAX_BATCHES steps long gone by (steps without a batch).
        if self._full or step >= batch.step + 2 * MAX_BATCHES:
            self._stop()

    def _stop(self) -> None:
        self._done = True
        self.retired = True  # no step-end or backward event for the rest of the run
        if self._recorder is not None:
            self._end_trace("the capture stopped before the backward")
        for h in self.handles:
            h.remove()
        self.handles.clear()
        if self._listening:
            remove_loss_listener(self)
            self._listening = False
        _patches.remove_amp_listener(self._clips)
        self._pending, self._outputs = None, []

    def clipped(self, fn: str, params: list[torch.Tensor], threshold: Any) -> None:
        """The script's first clip_grad_norm_/clip_grad_value_ over the model's params."""
        setup = self.setup
        if setup is None or setup.clip is not None or self._done:
            return
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            return
        ids = [self._index[id(p)] for p in params if id(p) in self._index]
        if ids:
            setup.clip = (fn, float(threshold), ids)

    def detach(self) -> None:
        self._stop()
        super().detach()

    def run_experiments(self, step: int, rec: Recorder) -> None:
        """At close, hooks detached: the recipe on a copy, one `experiment` event each."""
        if not experiments.enabled() and self.setup is None and self.skipped is None:
            return
        from ..experiments.fidelity import complete
        from ..experiments.recipe import run_recipe

        if self.setup is None or self.setup.batch is None:
            reason = self.why_not()
            if reason is None:
                return
            rec.event(step, "experiment", name="skipped", verdict="not_measured", reason=reason)
            return
        complete(self.setup, rec.timeline, self.ctx.scaler if self.ctx is not None else None)
        for event in run_recipe(self.setup):
            rec.event(step, "experiment", **event)

    def why_not(self) -> str | None:
        """Why no batch can be replayed, or None (a batch was captured, or nothing watched)."""
        if self.setup is not None and self.setup.batch is not None:
            return None
        reason = self.skipped
        if reason is None and self.setup is not None:
            reason = (
                f"no standard loss was called on the watched model's output itself (seen: "
                f"{', '.join(self._unmatched)} on other tensors, e.g. a sub-module's output or "
                f"one computed from it): the loss cannot be replayed from the model's inputs"
                if self._unmatched
                else "the loss is custom code (no torch.nn.functional loss call on the "
                "model's output): it cannot be replayed"
            )
        return reason

    def run_trials(self, findings: list[Any]) -> list[Any]:
        """At close, after the final diagnosis: the fix trials of the error findings
        (experiments/trials.py), when the experiments are on; the findings otherwise."""
        if not experiments.enabled() and self.setup is None and self.skipped is None:
            return findings
        from ..experiments.trial_record import payload
        from ..experiments.trials import run_trials

        if self._rec is not None and self.setup is not None and self.setup.lrs is None:
            from ..experiments.fidelity import complete

            complete(self.setup, self._rec.timeline, self.ctx.scaler if self.ctx else None)
        parts = self.loss_parts()
        if parts is not None:
            self.setup.micro_batches = int(parts["micro_batches"])  # TD109's trial reads it
            back, replayed = parts.get("backward"), parts.get("replayed")
            if back is not None and replayed:  # TD204's accumulation trial reads it
                self.setup.loss_factor = back / replayed
        tried = run_trials(self.setup, findings, self.why_not(), parts)
        if self._rec is not None:
            # In the timeline: every later diagnosis of it (`report --rediagnose`) re-attaches
            # each trial to its finding (diagnosis.py).
            step = self.ctx.state.step if self.ctx is not None else 0
            for f in tried:
                if "trial" in f.evidence:
                    self._rec.event(step, "fix_trial", **payload(f))
        return tried


def _autocast_now(where: Any) -> tuple[str, str] | None:
    """(device type, dtype name) of the autocast in force for this module's or tensor's
    device, or None."""
    t = where if isinstance(where, torch.Tensor) else next(where.parameters(), None)
    device = t.device.type if t is not None else "cpu"
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return device, str(torch.get_autocast_dtype(device)).removeprefix("torch.")


def _plain(value: Any) -> Any:
    """A group setting as the experiments use it (a tensor lr read once, at attach)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return value


class _ClipWatch(_patches.AmpListener):
    """The clip patches' listener: the clipping seen (AmpListener's other events are no-ops)."""

    def __init__(self, probe: CaptureProbe) -> None:
        self._probe = probe

    def clip_after(self, fn: str, params: Any, threshold: Any, result: Any) -> None:
        self._probe.clipped(fn, params, threshold)


def _nbytes(tree: Any) -> int:
    """Bytes of the tensors in a (cloned) call's arguments."""
    return sum(t.numel() * t.element_size() for t in iter_tensors(tree))

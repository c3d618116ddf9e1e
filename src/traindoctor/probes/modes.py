"""Modes and contamination: train/eval mode at each optimizer step, who switched it, validation
forwards run in train mode, params that became inference tensors, and fingerprints of the
models that `doc.validating()` evaluates.

Only mode-sensitive modules matter for train/eval (BatchNorm and InstanceNorm with running
stats, Dropout with p > 0): a model without them computes the same in both modes.

Costs: per step, one pass over the cached list of mode-sensitive modules (a bool each); per
training forward, one `torch.is_grad_enabled()` check; per `inference_mode` region in which a
watched model ran, one pass over its params (`is_inference()`); per validation, one fused norm
of the evaluated and trained params, read back with everything else.
"""

from __future__ import annotations

import functools
import weakref
from itertools import chain, compress
from operator import attrgetter, itemgetter
from typing import Any, ClassVar

import torch

from .. import _mode_patches
from .._heap import heap_roots
from .._source import user_source, user_source_with_code
from ..distributed.dtensor import local_all
from ..timeline import signal
from .base import AttachContext, Probe, Recorder, iter_tensors
from .functional_dropout import (
    add_dropout_listener,
    remove_dropout_listener,
    training_left_default,
)

MODES_EVAL = signal(
    "modes.eval_at_step",
    "per step where it changed: {'eval': [mode-sensitive modules in eval mode at the optimizer "
    "step], 'count': n, 'roots_training': {model: bool}}",
)
FUNCTIONAL_DROPOUT = signal(
    "modes.functional_dropout",
    "per step where it changed: {'on': n, 'off': n, 'roots_training': {model: bool}} calls of "
    "F.dropout (p > 0, outside nn.Dropout) in the step's training forwards by their "
    "`training` argument, and the watched models' mode at the optimizer step",
)
VALIDATED_FP = signal(
    "modes.validated_fingerprint",
    "per validation (appended): per-param norms of the model doc.validating() evaluates",
)
TRAINED_FP = signal(
    "modes.trained_fingerprint",
    "per validation (appended): per-param norms of the watched (trained) models at that moment",
)
MAX_EVENTS = 100
MAX_NAMES = 50
# Validation events: MAX_EVENTS per model (a teacher's passes each step do not use up another
# model's), at most this many in all.
MAX_VALIDATION_EVENTS = 1000
# Heap scans for unwatched copies of the watched models (an EMA), at the first evaluation
# (~70 ms on a heap of 350k objects); zero-code mode also looks in its attach's shared scan.
MAX_COPY_SCANS = 1
# Steps in which a watched model's training outputs are matched against the inputs of the
# others (a generator feeding its discriminator): the pairs are set by the code of the step.
FEED_STEPS = 8


_SWITCHABLE = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.modules.dropout._DropoutNd,
)


def tree_key(ctx: Any, switchable: list[torch.nn.Module], grads: bool = False) -> tuple[Any, ...]:
    """What an index of the watched models' modules depends on: the module tree (the context's
    tree_version: named_params() checks the tree once a step and walks it again only when it
    changed), the watched models themselves, whether each norm/dropout module is
    mode-sensitive now (a dropout's p set to 0 or back), and with `grads` which params
    require grad (frozen or unfrozen in place)."""
    pairs = ctx.named_params()
    sensitive = bytes(map(mode_sensitive, switchable))
    trains = bytes(map(_REQUIRES_GRAD, map(_TENSOR, pairs))) if grads else b""
    models = tuple(ctx.models), tuple(map(id, ctx.models.values()))
    return (ctx.tree_version, models, sensitive, trains)


_REQUIRES_GRAD = attrgetter("requires_grad")
_TENSOR = itemgetter(1)
_NAME = itemgetter(0)
_BUFFERS = attrgetter("_buffers")
_IS_INFERENCE = torch.Tensor.is_inference


def _no_inference_buffers(modules: list[torch.nn.Module] | None) -> bool:
    """True when no buffer of `modules` (plain dicts, read in C) is an inference tensor; False
    when it cannot tell (no module list, a buffer dict of another type) or one is."""
    if modules is None:
        return False
    dicts = list(map(_BUFFERS, modules))
    if not {dict}.issuperset(map(type, dicts)):
        return False
    values = filter(_is_tensor, chain.from_iterable(map(dict.values, dicts)))
    return not any(map(_IS_INFERENCE, values))


def _data_ptr(t: torch.Tensor) -> int | None:
    """The address of a tensor's memory; None where it has none (meta, sparse, a subclass
    without storage) or it is 0 (empty)."""
    try:
        return t.data_ptr() or None
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _is_dropout(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.modules.dropout._DropoutNd)


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.modules.batchnorm._NormBase)


def mode_sensitive(module: torch.nn.Module) -> bool:
    """Whether train/eval mode changes what the module computes."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm):
        return bool(module.track_running_stats)
    if isinstance(module, torch.nn.modules.dropout._DropoutNd):
        return module.p > 0
    return False


class ModesProbe(Probe):
    name = "modes"
    provides: ClassVar[tuple[str, ...]] = (MODES_EVAL, FUNCTIONAL_DROPOUT, VALIDATED_FP, TRAINED_FP)
    provides_events: ClassVar[tuple[str, ...]] = (
        "functional_dropout",
        "mode_call",
        "validation_in_train_mode",
        "put_in_eval",
        "model_feeds",
        "inference_tensors",
        "validated_model",
    )
    provides_facts: ClassVar[tuple[str, ...]] = ("modes",)

    def __init__(self) -> None:
        super().__init__()
        self._sensitive: list[tuple[str, str, torch.nn.Module]] = []  # (root, name, module)
        self._switchable: list[torch.nn.Module] = []  # norms and dropouts (see tree_key)
        self._indexed: tuple[Any, ...] | None = None  # tree_key at the last _index()
        self._names: dict[int, str] = {}  # id(module) -> qualified name, watched modules
        self._roots: dict[int, str] = {}
        # Watched models that only wrap another module (a task or loss wrapper around the
        # network: no params of their own, one child holding all the params and the
        # mode-sensitive modules): prefix -> that inner module, whose mode is the model's.
        self._inner: dict[str, torch.nn.Module] = {}
        # Watched models in no stepping optimizer, in eval mode at every step (None: no step).
        self._eval_untrained: frozenset[str] | None = None
        self._eval_since: dict[str, int] = {}  # root -> first step of its current eval run
        self._in_root = 0  # inside a watched model's forward (the inner one's is nested)
        self._last_eval: tuple[str, ...] | None = None
        self._events = 0  # mode_call events
        self._put_in_eval: set[str] = set()  # watched models the user put in eval mode
        self._validation_events: dict[str | None, int] = {}  # per model
        # Unwatched copies of a watched model (an EMA deep-copied from it): id of the module
        # holding the copy's params -> its record; id of each module of a copy -> that key.
        self._copies: dict[int, dict[str, Any]] = {}
        self._copy_ids: dict[int, int] = {}
        self._copy_scans = 0
        self._copy_scan_step: int | None = None
        self._nograd_forwards = 0
        # The first FEED_STEPS steps of a run of several watched models: root -> a weak
        # reference to the output of its last training forward; the pairs seen (model, into).
        self._outputs: dict[str, Any] | None = None
        self._feeds: set[tuple[str, str]] = set()
        # A watched model ran a training forward since the last backward: gradient-free
        # forwards now belong to this step's loss (a target/teacher pass), not a validation.
        self._grad_forward = False
        # The models whose gradient-free run was reported since the last step or backward: one
        # event each, so a teacher's pass each step does not hide a validation of another.
        self._phase_reported: set[str | None] = set()
        self._region_source: str | None = None
        self._region_step = 0
        self._forward_in_region = False
        self._inference_seen: set[str] = set()
        self._listening = False
        self._train_listener: Any = None
        # F.dropout calls of this step's training forwards, by their `training` argument
        self._fdrop = [0, 0]
        self._fdrop_last: tuple | None = None
        self._fdrop_said: set[bool] = set()
        # An F.dropout that dropped in a gradient-free forward since the last step or backward
        # (its line, p, and whether `training` was left at its default True)
        self._fdrop_nograd: dict[str, Any] | None = None
        # The optimizers that stepped this step or the one before (id -> last step), and the
        # watched models that hold their params: only those train now. A teacher trained in
        # an earlier phase, then frozen in eval mode for distillation, is not in eval mode
        # *while training* (its optimizer stopped stepping).
        self._opt_steps: dict[int, tuple[int, int]] = {}  # id -> (last step, the one before)
        self._trained_key: frozenset[int] | None = None
        self._trained_roots: frozenset[str] | None = None

    # -- structure ------------------------------------------------------------------------
    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._index()
        rec.timeline.facts["modes"] = {"sensitive": len(self._sensitive), "steps_in_eval": 0}
        for prefix, model in ctx.models.items():
            root = prefix.rstrip(".") or "<model>"
            self._roots[id(model)] = root
            self.handles.append(
                model.register_forward_hook(ctx.hook("probe modes", self._on_forward))
            )
            inner = _inner_model(model)
            if inner is None:
                continue
            # Validation that calls the wrapped network itself (timm's validate(model) with
            # the task wrapper trained): its forwards are the model's.
            self._inner[prefix] = inner
            self._roots.setdefault(id(inner), root)
            self.handles.append(
                model.register_forward_pre_hook(ctx.hook("probe modes", self._enter_root))
            )
            self.handles.append(
                model.register_forward_hook(
                    ctx.hook("probe modes", self._leave_root), always_call=True
                )
            )
            self.handles.append(
                inner.register_forward_hook(ctx.hook("probe modes", self._on_inner_forward))
            )
        if len(ctx.models) > 1:
            self._outputs = {}
        self._train_listener = ctx.hook("probe modes", self._on_train_call)
        _mode_patches.add_train_listener(self._train_listener)
        _mode_patches.add_region_listener(self)
        add_dropout_listener(self)
        self._listening = True
        self.scan_inference(1, rec, "attach")
        if ctx.mode == "zero-code":
            # Inside zero-code attach's one heap scan (_heap.one_scan): no cost of its own. The
            # first evaluation's scan still finds an EMA made at the first update.
            self._scan_copies()

    def _refresh(self) -> None:
        """`_index()` again only where it could differ (see `tree_key`): the walk costs ~10 us a
        module, on every sampled step, on models of thousands of modules."""
        assert self.ctx is not None
        key = tree_key(self.ctx, self._switchable)
        if key != self._indexed:
            self._index()

    def _index(self) -> None:
        assert self.ctx is not None
        self._sensitive.clear()
        self._names.clear()
        switchable: list[torch.nn.Module] = []
        for prefix, model in self.ctx.models.items():
            root = prefix.rstrip(".") or "<model>"
            for name, m in model.named_modules():
                qualified = f"{prefix}{name}" if name else root
                self._names[id(m)] = qualified
                if isinstance(m, _SWITCHABLE):
                    switchable.append(m)
                if mode_sensitive(m):
                    self._sensitive.append((root, qualified, m))
        self._switchable = switchable
        self._indexed = tree_key(self.ctx, switchable)

    # -- per step -------------------------------------------------------------------------
    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self._outputs is not None and step > FEED_STEPS:
            self._outputs = None
        self._nograd_forwards = 0
        self._grad_forward = False
        self._phase_reported.clear()
        self._fdrop_nograd = None
        self._fdrop = [0, 0]
        if sampled:
            self._refresh()  # modules replaced (fused, swapped heads) since the last look
            self.scan_inference(step, rec, "sampled step")

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        self._nograd_forwards = 0
        self._grad_forward = False
        self._phase_reported.clear()
        self._fdrop_nograd = None

    def functional_dropout(self, p: Any, training: Any) -> None:
        """An F.dropout call outside nn.Dropout (functional_dropout.py): counted when it is
        part of a training forward, with its source line the first time each mode is seen."""
        ctx = self.ctx
        if ctx is None or ctx.state.closed:
            return
        if not torch.is_grad_enabled():
            self._nograd_functional(p, training)
            return
        if ctx.state.validating or not (isinstance(p, int | float) and p > 0):
            return
        if not isinstance(training, bool):
            return  # a tensor flag: reading it could wait on the device
        on = training
        self._fdrop[on] += 1
        if on not in self._fdrop_said:
            self._fdrop_said.add(on)
            where = user_source_with_code() or {}
            ctx.rec.event(
                ctx.state.step,
                "functional_dropout",
                training=on,
                p=float(p),
                source=where.get("source"),
                code=where.get("code"),
            )

    def _nograd_functional(self, p: Any, training: Any) -> None:
        """An F.dropout that drops (training is True, p > 0) in a gradient-free forward, called
        by the user's code with `training` left at its default: its line is kept (once until
        the next step) for _on_forward's validation check. A call that passes `training`
        (True on purpose: Tacotron 2's prenet, Monte-Carlo dropout) is left out, and so is a
        library's call (it passes its module's mode; the module case is TD403's own)."""
        if training is not True or self._fdrop_nograd is not None:
            return
        if not (isinstance(p, int | float) and p > 0):
            return
        where = training_left_default()
        if where is None:
            # `training` passed (True on purpose: Tacotron 2's prenet, Monte-Carlo dropout;
            # or the module's own flag), or a library's call: not this finding's case.
            return
        self._fdrop_nograd = {"source": where["source"], "p": float(p), "default": True}

    def _note_eval_untrained(self, trained: frozenset[str], rec: Recorder) -> None:
        """The watched models that no stepping optimizer trains and that are in eval mode at
        every step so far (a frozen loss network or teacher put in eval by the user), as
        facts['modes']['eval_untrained'] for TD103."""
        assert self.ctx is not None
        now = frozenset(
            root
            for p, m in self.ctx.models.items()
            if (root := p.rstrip(".") or "<model>") not in trained
            and not self._inner.get(p, m).training
        )
        before = self._eval_untrained
        self._eval_untrained = now if before is None else before & now
        if self._eval_untrained != before:
            rec.timeline.facts["modes"]["eval_untrained"] = sorted(self._eval_untrained)

    def _note_eval_since(self, step: int, trained: frozenset[str], rec: Recorder) -> None:
        """facts['modes']['eval_since']: each watched model that is in eval mode and that no
        stepping optimizer trains, with the first step of that unbroken run (a teacher put in
        eval after its own training phase, then used by a student's loss: TD105 tells its
        stopped optimizer from a lost step()). One mode read per watched model a step."""
        assert self.ctx is not None
        since = self._eval_since
        changed = False
        for p, m in self.ctx.models.items():
            root = p.rstrip(".") or "<model>"
            if root not in trained and not self._inner.get(p, m).training:
                if root not in since:
                    since[root] = step
                    changed = True
            elif since.pop(root, None) is not None:
                changed = True
        if changed:
            rec.timeline.facts["modes"]["eval_since"] = dict(since)

    def _record_functional(self, step: int, rec: Recorder, roots: dict[str, bool]) -> None:
        off, on = self._fdrop
        if not (off or on):
            return
        if off and not on:
            facts = rec.timeline.facts["modes"]
            facts["functional_off_steps"] = facts.get("functional_off_steps", 0) + 1
        state = (bool(on), bool(off), tuple(sorted(roots.items())))
        if state != self._fdrop_last:
            self._fdrop_last = state
            rec.record(step, FUNCTIONAL_DROPOUT, {"on": on, "off": off, "roots_training": roots})

    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        last = self._opt_steps.get(id(opt), (0, 0))[0]
        if last != step:
            self._opt_steps[id(opt)] = (step, last)
        # At every optimizer's step, not only the primary's (on_pre_step): after a teacher's
        # phase its optimizer, the primary, never steps again. The cached roots of these
        # optimizers (recomputed only when they change; a sampled step's on_pre_step
        # recomputes them as before): no walk of the params per optimizer step.
        trained = self._trained(step, False)
        if trained is not None:
            self._note_eval_since(step, trained, rec)

    def _trained(self, step: int, sampled: bool) -> frozenset[str] | None:
        """The watched models (root names) whose params the optimizers stepping now (this
        step, and the one before in a steady loop: a GAN's second optimizer steps after this)
        hold (empty: the stepping optimizers train none of them, e.g. a student found after
        the teacher's phase); None when no optimizer steps (hand-written updates)."""
        ctx = self.ctx
        if ctx is None:
            return None
        now = {i for i, (last, _) in self._opt_steps.items() if last == step}
        # The previous step's optimizers count only in a steady loop (those stepping now also
        # stepped then): a GAN's G optimizer, stepped after this pre-step. At a new phase's
        # first step the previous phase's optimizer is over.
        if any(self._opt_steps[i][1] == step - 1 for i in now):
            now |= {i for i, (last, _) in self._opt_steps.items() if last == step - 1}
        key = frozenset(now)
        if key == self._trained_key and not sampled:
            return self._trained_roots
        ids = set(
            map(
                id,
                chain.from_iterable(
                    g["params"]
                    for opt in ctx.optimizers
                    if id(opt) in key
                    for g in opt.param_groups
                ),
            )
        )
        # A model is trained when the stepping optimizers hold its params and they have a
        # gradient: an optimizer built over a frozen teacher (no_grad forwards) steps nothing
        # of it, and its eval mode is not the run's problem (TD103 names the student left out).
        roots = frozenset(
            p.rstrip(".") or "<model>"
            for p, m in ctx.models.items()
            if any(id(q) in ids and q.grad is not None for q in m.parameters())
        )
        self._trained_key, self._trained_roots = key, (roots if ids else None)
        return self._trained_roots

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        trained = self._trained(step, sampled)
        if trained is not None and self._eval_untrained != frozenset():
            self._note_eval_untrained(trained, rec)
        if self._fdrop[0] or self._fdrop[1]:
            assert self.ctx is not None
            roots = {
                (p.rstrip(".") or "<model>"): bool(self._inner.get(p, m).training)
                for p, m in self.ctx.models.items()
                if trained is None or (p.rstrip(".") or "<model>") in trained
            }
            self._record_functional(step, rec, roots)
        in_eval_modules = [
            (name, m)
            for root, name, m in self._sensitive
            if not m.training and (trained is None or root in trained)
        ]
        in_eval = tuple(name for name, _ in in_eval_modules)
        if in_eval:
            facts = rec.timeline.facts["modes"]
            facts["steps_in_eval"] = facts.get("steps_in_eval", 0) + 1
        if in_eval != self._last_eval:
            self._last_eval = in_eval
            assert self.ctx is not None
            rec.record(
                step,
                MODES_EVAL,
                {
                    "eval": list(in_eval[:MAX_NAMES]),
                    "count": len(in_eval),
                    "sensitive": len(self._sensitive),
                    # Only normalization layers (no Dropout): what a BatchNorm freeze leaves.
                    "norms_only": not any(map(_is_dropout, map(_TENSOR, in_eval_modules))),
                    "roots_training": {
                        (p.rstrip(".") or "<model>"): bool(self._inner.get(p, m).training)
                        for p, m in self.ctx.models.items()
                        if trained is None or (p.rstrip(".") or "<model>") in trained
                    },
                },
            )

    # -- who switched modes ---------------------------------------------------------------
    def _on_train_call(self, module: torch.nn.Module, mode: bool) -> None:
        ctx = self.ctx
        if ctx is None or ctx.state.switching_modes:
            return
        key = self._copy_ids.get(id(module))
        if key is not None:
            copy = self._copies[key]
            if not copy["mode_set"] and copy["evented"] == ctx.state.step:
                # Set right after train-mode passes of the same step (a BN re-estimation by
                # hand, then `.eval()` to evaluate): those passes were the user's choice too.
                ctx.rec.event(
                    ctx.state.step,
                    "validation_in_train_mode",
                    model=copy["name"],
                    trained=False,
                    copy_of=copy["of"],
                    mode_set_after=True,
                )
            copy["mode_set"] = True  # its mode is the user's choice now
            return
        root = self._roots.get(id(module))
        if not mode and root is not None and root not in self._put_in_eval:
            # Once per model, past the mode_call cap (a `.train()` every step uses it up):
            # the run evaluates this model in eval mode somewhere (TD403's wording).
            self._put_in_eval.add(root)
            ctx.rec.event(ctx.state.step, "put_in_eval", model=root, source=user_source(2))
        if self._events >= MAX_EVENTS:
            return
        name = self._names.get(id(module))
        if name is None:
            return
        if id(module) in self._roots:
            self._index()  # a root switching modes is rare: refresh what it contains
            if not mode:
                self._evaluation_seen()
        self._events += 1
        ctx.rec.event(
            ctx.state.step,
            "mode_call",
            module=name,
            root=id(module) in self._roots,
            training=mode,
            validating=ctx.state.validating,
            source=user_source(2),
            norm=_is_norm(module),
        )

    # -- validation forwards --------------------------------------------------------------
    def _enter_root(self, _module: torch.nn.Module, _args: Any) -> None:
        self._in_root += 1

    def _leave_root(self, _module: torch.nn.Module, _args: Any, _output: Any) -> None:
        self._in_root = max(0, self._in_root - 1)

    def _on_inner_forward(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._in_root:
            return  # called by its wrapper: the wrapper's forward is the one counted
        self._on_forward(module, args, output)

    def _on_forward(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            self._grad_forward = True
            if self._outputs is not None:
                self._note_feeds(module, args, output)
            return  # a training forward: nothing else to look at
        if torch.is_inference_mode_enabled():
            self._forward_in_region = True
        ctx = self.ctx
        if self._grad_forward and ctx is not None and not ctx.state.validating:
            # Between a training forward and its backward: a pass whose output this step's
            # loss reads (BYOL's target network on both views, MoCo's key encoder), which
            # nobody validates in the middle of.
            return
        self._nograd_forwards += 1
        if ctx is None:
            return
        if self._copy_scans < MAX_COPY_SCANS:
            self._evaluation_seen()
        # One no-grad forward between steps is often deliberate (pseudo-labels, a teacher
        # pass); a validation is a run of them, or anything inside doc.validating().
        if self._nograd_forwards < 2 and not ctx.state.validating:
            return
        root = self._roots.get(id(module))
        if root in self._phase_reported:
            return
        if not any(r == root and m.training for r, _, m in self._sensitive):
            self._functional_in_validation(root)
            return
        self._index()  # modules fused away or swapped since the last look must not count
        training = [n for r, n, m in self._sensitive if r == root and m.training]
        if not training or not self._take_validation_event(root):
            return
        self._phase_reported.add(root)
        held = ctx.optimizer_param_ids()
        ctx.rec.event(
            ctx.state.step,
            "validation_in_train_mode",
            model=root,
            modules=training[:MAX_NAMES],
            count=len(training),
            forwards=self._nograd_forwards,
            validating=ctx.state.validating,
            trained=any(id(p) in held for p in module.parameters()),
            source=user_source(2),
        )

    def _note_feeds(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """In the first FEED_STEPS steps: a `model_feeds` event (once per pair) when an input of
        this training forward holds the memory of another watched model's last training output
        still alive (a generator's images, or their `.detach()`, given to the discriminator);
        then this forward's output is kept (weakly) for the models called after it."""
        outputs, ctx = self._outputs, self.ctx
        root = self._roots.get(id(module))
        if outputs is None or ctx is None or root is None:
            return
        ptrs = {_data_ptr(a) for a in args if isinstance(a, torch.Tensor)} - {None}
        for other, ref in list(outputs.items()):
            out = ref()
            if other == root or out is None or (other, root) in self._feeds:
                continue
            if _data_ptr(out) in ptrs:
                self._feeds.add((other, root))
                ctx.rec.event(ctx.state.step, "model_feeds", model=other, into=root)
        first = output if isinstance(output, torch.Tensor) else None
        if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
            first = output[0]
        if first is not None:
            try:
                outputs[root] = weakref.ref(first)
            except TypeError:
                outputs.pop(root, None)

    def _functional_in_validation(self, root: str | None) -> None:
        """A validation whose forwards dropped out through F.dropout (no Dropout module in
        train mode): the call's `training` was True while gradients were off."""
        ctx = self.ctx
        if self._fdrop_nograd is None or ctx is None:
            return
        if not self._take_validation_event(root):
            return
        self._phase_reported.add(root)
        ctx.rec.event(
            ctx.state.step,
            "validation_in_train_mode",
            model=root,
            modules=[],
            count=0,
            forwards=self._nograd_forwards,
            validating=ctx.state.validating,
            source=user_source(3),
            functional_dropout=dict(self._fdrop_nograd),
        )

    def _take_validation_event(self, model: str | None) -> bool:
        """Whether another validation event of `model` may be recorded: MAX_EVENTS per model
        (a teacher's gradient-free pass each step does not use up the validations of
        another), MAX_VALIDATION_EVENTS in all."""
        taken = self._validation_events
        if taken.get(model, 0) >= MAX_EVENTS or sum(taken.values()) >= MAX_VALIDATION_EVENTS:
            return False
        taken[model] = taken.get(model, 0) + 1
        return True

    # -- unwatched copies (an EMA) evaluated in train mode ---------------------------------
    def _evaluation_seen(self) -> None:
        """A watched model was put in eval mode or ran without gradient, or an inference_mode
        region opened: an evaluation, where an EMA copy is evaluated too. The heap is scanned
        for copies at the first such moment (~70 ms on a heap of 350k objects), never on a run
        that evaluates nothing; a copy made after it is not followed."""
        ctx = self.ctx
        if ctx is None or self._copy_scans >= MAX_COPY_SCANS:
            return
        step = ctx.state.step
        if self._copy_scan_step is not None and step <= self._copy_scan_step + 1:
            return
        self._copy_scan_step = step
        self._copy_scans += 1
        self._scan_copies()

    def _scan_copies(self) -> None:
        """Hook the unwatched modules of the heap that are copies of a watched model with
        mode-sensitive modules: the same class and the same parameter names and shapes (of
        the module holding the params, under any wrapper: timm's ModelEmaV2.module), and no
        param held by an optimizer (trained models are not copies)."""
        ctx = self.ctx
        assert ctx is not None
        targets = []
        for prefix, model in ctx.models.items():
            if not isinstance(model, torch.nn.Module):
                continue
            holder = _holder(model)
            if not any(_mode_changes(m) for m in holder.modules()):
                continue  # train mode changes nothing in a copy of it either
            signature = [(n, tuple(p.shape)) for n, p in holder.named_parameters()]
            if signature:
                targets.append((prefix.rstrip(".") or "<model>", type(holder), signature))
        if not targets:
            return
        watched = {id(m) for model in ctx.models.values() for m in model.modules()}
        held = ctx.optimizer_param_ids()
        for module in heap_roots():
            if id(module) in watched or id(module) in self._copy_ids:
                continue
            holder = _holder(module)
            for of, cls, signature in targets:
                if type(holder) is not cls:
                    continue
                params = list(holder.named_parameters())
                if [(n, tuple(p.shape)) for n, p in params] != signature:
                    continue
                if any(id(p) in held or p.grad is not None for _, p in params):
                    continue  # trained (by an optimizer, or one not watched): not a copy
                self._add_copy(module, holder, of)
                break

    def _add_copy(self, module: torch.nn.Module, holder: torch.nn.Module, of: str) -> None:
        ctx = self.ctx
        assert ctx is not None
        base = type(module).__name__
        taken = set(self._roots.values()) | {c["name"] for c in self._copies.values()}
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}{k}"
        prefix = (
            "" if holder is module else next(n for n, m in module.named_modules() if m is holder)
        )
        sensitive = [
            (".".join(x for x in (name, prefix, n) if x), m)
            for n, m in holder.named_modules()
            if _mode_changes(m)
        ]
        key = id(holder)
        self._copies[key] = {
            "name": name,
            "of": of,
            # a few params: a gradient on one later means the module is trained after all (a
            # later phase's model of the same class, its optimizer not watched)
            "params": [p for _, p in zip(range(4), holder.parameters())],
            "sensitive": sensitive,
            "mode_set": False,
            "last": None,
            "evented": None,  # the step of its last validation_in_train_mode event
        }
        for m in module.modules():
            self._copy_ids[id(m)] = key
        # Pre-hooks on the copy and on its params' holder (`ema(x)` or `ema.module(x)`): the
        # outer one runs first, so the line named is the user's call.
        hook = ctx.hook("probe modes", functools.partial(self._on_copy_forward, key))
        for m in {id(module): module, id(holder): holder}.values():
            self.handles.append(m.register_forward_pre_hook(hook))

    def _on_copy_forward(self, key: int, _module: torch.nn.Module, _args: Any) -> None:
        """A gradient-free forward of an unwatched copy: the first of each step in which its
        mode-sensitive modules are in train mode is a `validation_in_train_mode` event (the
        rule tells a teacher run every step from an evaluation). A copy whose mode the user
        set (`.eval()`, `.train()`) since it was found is the user's choice: not recorded."""
        if torch.is_grad_enabled():
            return
        ctx = self.ctx
        copy = self._copies.get(key)
        if ctx is None or copy is None or copy["mode_set"]:
            return
        if any(p.grad is not None for p in copy["params"]):
            copy["mode_set"] = True  # it gets gradients: a trained model, not a copy
            return
        step = ctx.state.step
        if copy["last"] == step:
            return
        copy["last"] = step
        training = [n for n, m in copy["sensitive"] if m.training]
        if not training or not self._take_validation_event(copy["name"]):
            return
        copy["evented"] = step
        ctx.rec.event(
            step,
            "validation_in_train_mode",
            model=copy["name"],
            modules=training[:MAX_NAMES],
            count=len(training),
            validating=ctx.state.validating,
            trained=False,
            copy_of=copy["of"],
            source=user_source(2),
        )

    # -- inference_mode regions (called by _mode_patches) ---------------------------------
    def region_enter(self) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        ctx.guard.call("probe modes", self._enter_region)

    def _enter_region(self) -> None:
        assert self.ctx is not None
        ctx = self.ctx
        self._region_source = user_source(2)
        self._region_step = ctx.state.step
        self._forward_in_region = False
        if self._copy_scans < MAX_COPY_SCANS:
            self._evaluation_seen()

    def region_exit(self) -> None:
        ctx = self.ctx
        if ctx is None or not self._forward_in_region:
            return  # no watched model ran inside: the sampled-step scan covers the rest
        self._forward_in_region = False
        ctx.guard.call("probe modes", self.scan_inference, ctx.state.step, ctx.rec, "region")

    def scan_inference(self, step: int, rec: Recorder, when: str) -> None:
        ctx = self.ctx
        assert ctx is not None
        if len(ctx.models) == 1 and when == "sampled step":
            # The step's shared walk, fresh when a step opens: the same names, in order.
            named = ctx.named_params()
            params = list(compress(map(_NAME, named), map(_IS_INFERENCE, map(_TENSOR, named))))
        else:
            params = [
                f"{prefix}{n}"
                for prefix, model in ctx.models.items()
                for n, p in model.named_parameters()
                if p.is_inference()
            ]
        if _no_inference_buffers(ctx.watched_modules()):
            buffers = []  # (a walk of named_buffers() was ~3 ms on 5,000 modules)
        else:
            buffers = [
                f"{prefix}{n}"
                for prefix, model in ctx.models.items()
                for n, b in model.named_buffers()
                if b.is_inference()
            ]
        new = set(params + buffers) - self._inference_seen
        if not new:
            return
        self._inference_seen |= new
        held = ctx.optimizer_param_ids()
        in_optimizer = [
            f"{prefix}{n}"
            for prefix, model in ctx.models.items()
            for n, p in model.named_parameters()
            if p.is_inference() and id(p) in held
        ]
        rec.event(
            step,
            "inference_tensors",
            params=params[:MAX_NAMES],
            buffers=buffers[:MAX_NAMES],
            count=len(params) + len(buffers),
            in_optimizer=in_optimizer[:MAX_NAMES],
            region_source=self._region_source,
            region_step=self._region_step if self._region_source else None,
            found_at=when,
        )

    # -- doc.validating() -----------------------------------------------------------------
    def on_validation(self, step: int, model: torch.nn.Module | None, rec: Recorder) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        targets = [model] if model is not None else list(ctx.models.values())
        evaluated_params = [p for t in targets for p in t.parameters()]
        trained_params = [p for _, p in ctx.named_params()]
        # Identity of the parameters themselves (a .detach() is a new tensor object).
        is_trained = {id(p) for p in evaluated_params} <= {id(p) for p in trained_params}
        evaluated = [p.detach() for p in evaluated_params]
        trained = [p.detach() for p in trained_params]
        if model is None:
            name = "<watched models>"
        elif id(model) in self._roots:
            name = self._roots[id(model)]
        else:
            name = f"a {type(model).__name__} that is not a watched model"
        rec.event(
            step,
            "validated_model",
            model=name,
            is_trained_model=bool(evaluated) and is_trained,
            params=len(evaluated),
            source=user_source(),
        )
        for tensors, sig in ((evaluated, VALIDATED_FP), (trained, TRAINED_FP)):
            floats = [t for t in tensors if t.is_floating_point()]
            if floats:
                with torch.no_grad():
                    norms = torch._foreach_norm(local_all(floats))
                for device_norms in _by_device(norms):
                    rec.defer(step, sig, torch.stack(device_norms).float(), append=True)

    def detach(self) -> None:
        super().detach()
        if self._listening:
            _mode_patches.remove_train_listener(self._train_listener)
            _mode_patches.remove_region_listener(self)
            remove_dropout_listener(self)
            self._listening = False


def _inner_model(model: torch.nn.Module, depth: int = 4) -> torch.nn.Module | None:
    """The module a watched model only wraps: the model has no params of its own, and one
    child holds all its params and all its mode-sensitive modules (a task/loss wrapper,
    `Wrapper(net, criterion)`), followed down while that holds. None when the model is not
    such a wrapper."""
    inner = None
    m = model
    for _ in range(depth):
        if any(p is not None for p in m._parameters.values()):
            break
        holders = [c for c in m.children() if next(c.parameters(), None) is not None]
        if len(holders) != 1:
            break
        child = holders[0]
        others = [c for c in m.children() if c is not child]
        if any(mode_sensitive(x) for o in others for x in o.modules()):
            break
        if not any(mode_sensitive(x) for x in child.modules()):
            break
        inner = m = child
    return inner


def _holder(model: torch.nn.Module, depth: int = 4) -> torch.nn.Module:
    """The module holding all of `model`'s params under wrappers without params of their own
    (an EMA wrapper's `.module`, DDP's), or `model` itself."""
    m = model
    for _ in range(depth):
        if any(p is not None for p in m._parameters.values()):
            break
        holders = [c for c in m.children() if next(c.parameters(), None) is not None]
        if len(holders) != 1:
            break
        m = holders[0]
    return m


def _mode_changes(module: torch.nn.Module) -> bool:
    """`mode_sensitive`, where a BatchNorm counts only when it keeps running statistics
    (without them it normalizes by the batch in both modes)."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return getattr(module, "running_mean", None) is not None
    return mode_sensitive(module)


def _by_device(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[list[torch.Tensor]]:
    out: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        out.setdefault(t.device, []).append(t)
    return list(out.values())


# -- TD516: frozen modules left in train mode ---------------------------------------------
# A separate probe (its own name, guard key and schedule) kept beside ModesProbe because it
# reads the same mode flags; ModesProbe above is unchanged by it.
FROZEN_BN_DRIFT = signal(
    "modes.frozen_bn_drift",
    "per observed step: {BatchNorm inside a frozen module: relative change of its running "
    "mean/var since the previous observed step}",
)
FROZEN_PARAMS_MOVED = signal(
    "modes.frozen_params_moved",
    "per observed step: {frozen module with BatchNorm: relative change of its sampled "
    "parameters (its BatchNorms' affine ones, else its first) since the previous observed step}",
)
_DRIFT_EPS = 1e-12


class FrozenModesProbe(Probe):
    """Modules whose params are all frozen while the rest trains, and the mode-sensitive
    modules inside them: in train mode (a bool each), how much their BatchNorm running
    statistics moved between observed steps (one fused norm per BN, deferred), whether its
    parameters moved all the same (a momentum/EMA target updated in place: BYOL, MoCo, mean
    teacher; one norm of a few small tensors, deferred), and whether the frozen module's output
    carries a graph (host metadata in a forward hook).

    Costs: on observed steps (the first 3, then sampled) one walk of the module tree, a
    clone of the frozen BatchNorms' running statistics; a forward hook per frozen module
    that returns at once on other steps."""

    name = "frozen_modes"
    provides: ClassVar[tuple[str, ...]] = (FROZEN_BN_DRIFT, FROZEN_PARAMS_MOVED)
    provides_events: ClassVar[tuple[str, ...]] = ("frozen_modules",)
    sampled_only = frozenset({"on_pre_step"})  # _observe is step <= 3 or sampled

    def __init__(self) -> None:
        super().__init__()
        self._frozen: dict[str, torch.nn.Module] = {}  # maximal frozen module -> module
        self._inside: dict[str, list[tuple[str, torch.nn.Module]]] = {}  # its sensitive modules
        self._snap: dict[str, torch.Tensor] = {}
        self._psnap: dict[str, torch.Tensor] = {}  # frozen module -> its sampled params
        self._out_grad: dict[str, bool] = {}
        self._hooked: dict[int, Any] = {}
        self._switchable: list[torch.nn.Module] = []  # norms and dropouts (see tree_key)
        self._indexed: tuple[Any, ...] | None = None  # tree_key at the last _index()
        self._observe = False
        self._last: Any = None
        self._events = 0

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._observe = step <= 3 or sampled
        if self._observe:
            assert self.ctx is not None
            # Again only where it could differ (tree_key): a walk of every module's subtree
            # on every observed step otherwise.
            if tree_key(self.ctx, self._switchable, grads=True) != self._indexed:
                self._index()

    def _index(self) -> None:
        assert self.ctx is not None
        frozen: dict[str, torch.nn.Module] = {}
        inside: dict[str, list[tuple[str, torch.nn.Module]]] = {}
        trainable = False
        # (has params, has a trainable one) of each module's subtree, bottom-up: one pass
        # instead of m.parameters() re-walking every module's subtree (quadratic in depth).
        held: dict[int, tuple[bool, bool]] = {}
        switchable: list[torch.nn.Module] = []
        for prefix, model in self.ctx.models.items():
            root = prefix.rstrip(".") or "<model>"
            for name, m in model.named_modules():
                if isinstance(m, _SWITCHABLE):
                    switchable.append(m)
                has, trains = _subtree_params(m, held)
                trainable = trainable or trains
                qualified = f"{prefix}{name}" if name else root
                if not has or trains:
                    continue
                if any(qualified.startswith(f"{f}.") for f in frozen) or (root in frozen and name):
                    continue  # inside a frozen module already listed
                sensitive = [
                    (f"{qualified}.{n}" if n else qualified, s)
                    for n, s in m.named_modules()
                    if mode_sensitive(s)
                ]
                if sensitive:
                    frozen[qualified] = m
                    inside[qualified] = sensitive
        if not trainable:
            frozen, inside = {}, {}  # nothing trains at all: TD110's business
        self._frozen, self._inside = frozen, inside
        self._switchable = switchable
        self._indexed = tree_key(self.ctx, switchable, grads=True)
        for key, handle in list(self._hooked.items()):
            if not any(id(m) == key for m in frozen.values()):
                handle.remove()
                del self._hooked[key]
        for name, m in frozen.items():
            if id(m) not in self._hooked:
                hook = self.ctx.hook("probe frozen_modes", self._forward_hook(name))
                handle = m.register_forward_hook(hook)
                self._hooked[id(m)] = handle
                self.handles.append(handle)

    def _forward_hook(self, name: str) -> Any:
        def on_forward(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            if not self._observe or not torch.is_grad_enabled():
                return  # validation forwards are TD403's
            tensors = [t for t in iter_tensors(output) if t.is_floating_point()]
            if tensors:
                self._out_grad[name] = any(t.requires_grad for t in tensors)

        return on_forward

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        if not self._observe or not self._frozen:
            return
        state = {}
        for root, modules in self._inside.items():
            bn = [n for n, m in modules if _has_stats(m)]
            state[root] = {
                "bn_train": [n for n, m in modules if _has_stats(m) and m.training][:MAX_NAMES],
                "bn_count": len(bn),
                "dropout_train": [
                    n
                    for n, m in modules
                    if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training
                ][:MAX_NAMES],
                "output_requires_grad": self._out_grad.get(root),
            }
        if state != self._last and self._events < MAX_EVENTS:
            self._last = state
            self._events += 1
            rec.event(step, "frozen_modules", modules=state)
        self._measure_drift(step, rec)

    def _measure_drift(self, step: int, rec: Recorder) -> None:
        names, drifts = [], []
        snap: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for modules in self._inside.values():
                for n, m in modules:
                    if not _has_stats(m):
                        continue
                    cur = torch.cat([m.running_mean.reshape(-1), m.running_var.reshape(-1)])
                    cur = cur.float()
                    prev = self._snap.get(n)
                    if prev is not None and prev.shape == cur.shape and prev.device == cur.device:
                        names.append(n)
                        drifts.append((cur - prev).norm() / (prev.norm() + _DRIFT_EPS))
                    snap[n] = cur.clone()
        self._snap = snap
        for device_names, device_drifts in _group(names, drifts):
            rec.defer(step, FROZEN_BN_DRIFT, torch.stack(device_drifts), keys=device_names)
        self._measure_params(step, rec)

    def _measure_params(self, step: int, rec: Recorder) -> None:
        """Whether a frozen module with BatchNorm had its parameters changed in place since
        the previous observed step: no optimizer trains it, so they move only when the user
        updates it (an EMA/momentum target). A sample is enough: such an update moves every
        parameter, a frozen pretrained part moves none."""
        names, moves = [], []
        snap: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for root, modules in self._inside.items():
                bns = [m for _, m in modules if _has_stats(m)]
                if not bns:
                    continue  # no statistics to drift: nothing TD516 weighs
                sample = [p for m in bns for p in m.parameters(recurse=False)]
                if not sample:
                    first = next(self._frozen[root].parameters(), None)
                    sample = [first] if first is not None else []
                if not sample or len({p.device for p in sample}) != 1:
                    continue
                cur = torch.cat([p.detach().reshape(-1).float() for p in sample])
                prev = self._psnap.get(root)
                if prev is not None and prev.shape == cur.shape and prev.device == cur.device:
                    names.append(root)
                    moves.append((cur - prev).norm() / (prev.norm() + _DRIFT_EPS))
                snap[root] = cur.clone()
        self._psnap = snap
        for device_names, device_moves in _group(names, moves):
            rec.defer(step, FROZEN_PARAMS_MOVED, torch.stack(device_moves), keys=device_names)

    def detach(self) -> None:
        super().detach()
        self._hooked.clear()
        self._snap.clear()
        self._psnap.clear()


def _subtree_params(m: torch.nn.Module, memo: dict[int, tuple[bool, bool]]) -> tuple[bool, bool]:
    """Whether `m.parameters()` is non-empty, and whether one of them requires grad."""
    known = memo.get(id(m))
    if known is not None:
        return known
    has = trains = False
    for p in m._parameters.values():
        if p is not None:
            has = True
            trains = trains or p.requires_grad
    for child in m._modules.values():
        if child is not None and not (has and trains):
            c_has, c_trains = _subtree_params(child, memo)
            has, trains = has or c_has, trains or c_trains
    memo[id(m)] = (has, trains)
    return has, trains


def _has_stats(m: torch.nn.Module) -> bool:
    return (
        isinstance(
            m, torch.nn.modules.batchnorm._BatchNorm | torch.nn.modules.instancenorm._InstanceNorm
        )
        and getattr(m, "running_mean", None) is not None
        and getattr(m, "running_var", None) is not None
    )


def _group(
    names: list[str], tensors: list[torch.Tensor]
) -> list[tuple[list[str], list[torch.Tensor]]]:
    out: dict[torch.device, tuple[list[str], list[torch.Tensor]]] = {}
    for n, t in zip(names, tensors):
        ns, ts = out.setdefault(t.device, ([], []))
        ns.append(n)
        ts.append(t)
    return list(out.values())

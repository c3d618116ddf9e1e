"""Ranks: what each rank of a distributed job records for the cross-rank rules (TD601, TD605;
the merge folds the ranks' timelines side by side: distributed/job_timeline.py).

Active only in a job of more than one process (distributed.detect()); a single process pays
nothing. Never a collective, never a wait: each rank records its own values in its own
timeline, and the ranks are compared at the merge, after the job.

- DDP-wrapped models (a `DistributedDataParallel` among the watched models): a forward
  pre-hook on the wrapped module (`ddp.module`) fingerprints its parameters and floating-point
  buffers on fingerprint steps: steps 1-4, the powers of two, every `FP_EVERY`-th. The schedule
  is a function of the step count alone, so every rank fingerprints the same steps. Two fused
  `torch._foreach_norm` calls (L2 and L1, accumulated in float32) per device, deferred to the
  batched read-back: no host sync. It runs at the step's first training forward, after DDP's
  own buffer broadcast (buffers then match across ranks when `broadcast_buffers=True`).
  The same hook counts the training forwards of the wrapped module that did not come through
  its wrapper (`model.module(x)`: DDP never all-reduces that step's gradients), with the user's
  line of the first; hooks on the wrapper mark the forwards that do. A watched module that is
  itself wrapped by a DDP the script did not hand over (`td.watch(model.module)`, the
  framework integrations, which watch the unwrapped module) is matched to its wrapper at its
  first training forwards, where DDP names itself the active one
  (`DistributedDataParallel._active_ddp_module`). A watched model deeper inside a DDP wrapper
  (Lightning's LightningModule: the wrapper calls its training_step, never its forward) is
  found in memory at attach (one pass over the garbage collector's objects, only in a
  distributed job with such a model) and fingerprinted when each fingerprint step opens. The wrapper's settings
  (`broadcast_buffers`, `find_unused_parameters`) and the parameters DDP does not synchronize
  (registered after wrapping, or ignored) are recorded when they change.
- Gradient synchronization (TD606): the wrapper's forward pre-hook reads DDP's
  `require_backward_grad_sync` (False inside `no_sync()`), which DDP reads at that forward to
  decide whether the following backward all-reduces. A step whose last backward followed a
  forward without it (its optimizer step applies gradients the ranks did not exchange: the
  user's line of that forward is recorded), or that ran several synchronized forwards (with
  its backward passes counted: accumulation without no_sync all-reduces each micro-batch),
  is recorded.
- torch.save (TD607): while a rank is watched, `torch.save` (and `torch.serialization.save`)
  pass through a wrapper that records the absolute path of each file written (a file object
  or a buffer is not recorded), the host and the user's line; the merge compares the ranks'
  paths. An audit hook would not see it: torch's zip writer opens the file in C++.
- Collectives (TD608): while a rank is watched, `distributed_c10d._get_default_group`, which
  torch's collectives (all_reduce, barrier, broadcast, ...) call on the job's whole group
  before they run, passes through a listening wrapper that counts each such collective per
  step (its caller), the first ones of a step with the user's line: a rank that hangs in one
  has it recorded. Nothing is added to the group, and the script's own call chain to
  `dist.all_reduce` is untouched; the merge compares the ranks' counts after the job.
- The DataLoader's line (TD604): at the step opens 2-4 (inside the training loop), the user's
  line that built the DataLoader the loop iterates, read from the source
  (distributed/loader_line.py), once.
- DistributedSampler: the DataLoaders the data probe saw iterated (its `DataLoader.__iter__`
  listener; nothing patched here) are looked at when each step opens: their sampler's epoch,
  shuffle, seed and batches per epoch, recorded when they change.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import torch

from .._patching import Patch, PatchSet, acquire, release
from .._source import user_source
from ..distributed import loader_line
from ..distributed.ranks import RankInfo, detect
from ..timeline import signal
from .base import AttachContext, Probe, Recorder, by_device
from .data import _ITERATED

RANKS_DDP = signal(
    "ranks.ddp",
    "per step where it changes: {model prefix: {kind: ddp|fsdp, and for DDP: "
    "broadcast_buffers, find_unused_parameters, unsynced: params of the wrapped module DDP "
    "does not synchronize, ignored: params and buffers DDP was told to ignore}}",
)
RANKS_PARAM_FP = signal(
    "ranks.param_fp",
    "per fingerprint step (1-4, powers of 2, every FP_EVERY-th): {'<param>#2': L2 norm, "
    "'<param>#1': L1 norm} of each DDP-wrapped module's params at the step's first training "
    "forward",
)
RANKS_BUFFER_FP = signal(
    "ranks.buffer_fp",
    "per fingerprint step: {'<buffer>#2': L2 norm, '<buffer>#1': L1 norm} of each DDP-wrapped "
    "module's floating-point buffers at the step's first training forward (after DDP's buffer "
    "broadcast)",
)
RANKS_BYPASS = signal(
    "ranks.bypass",
    "per step with one: {count, source} training forwards of a DDP-wrapped module called "
    "directly, not through its DDP wrapper (source: the user's line of the first)",
)
RANKS_SYNC = signal(
    "ranks.sync",
    "per step with a DDP wrapper's training forwards not all synchronized, or several: "
    "{synced, unsynced, backwards, last, source} forwards through the wrapper with and "
    "without require_backward_grad_sync (no_sync()), the step's backward passes, whether the "
    "forward before its last backward synchronized, and (last False) the user's line of the "
    "step's last unsynchronized forward",
)
RANKS_SAVE = signal(
    "ranks.save",
    "per step with one: [{path, host, source}] torch.save calls to a file path (absolute), "
    "with the user's line",
)
RANKS_LOADER = signal(
    "ranks.loader",
    "once: {built, iterated} the user's lines that built the DataLoader the training loop "
    "iterates and that loop (read from the source, distributed/loader_line.py)",
)
RANKS_COLLECTIVES = signal(
    "ranks.collectives",
    "per step with one: {n, calls: [[op, source], ...]} the torch.distributed collectives "
    "this rank called on the whole job's group (n of them; the first MAX_CALLS with the user's "
    "line)",
)
RANKS_SAMPLER = signal(
    "ranks.sampler",
    "per step where it changes: {loader: {epoch, shuffle, batches, seed, dataset}} of each "
    "iterated DataLoader whose sampler is a DistributedSampler",
)

FP_EVERY = 100  # a fingerprint step every this many steps, past the powers of two
MAX_LOADERS = 8  # DistributedSampler loaders followed
FIND_FORWARDS = 8  # training forwards of an unwrapped model looked at for its DDP wrapper
MAX_SYNC_SOURCES = 32  # steps whose unsynchronized forwards are located (a stack walk each)
MAX_SAVES = 64  # torch.save calls recorded per rank
MAX_CALLS = 16  # collectives of a step recorded with their line
LOADER_TRIES = 3  # step opens at which the training loop's DataLoader line is looked for


def fingerprint_step(step: int) -> bool:
    """The steps every rank fingerprints: a function of the step number alone."""
    return step <= 4 or (step & (step - 1)) == 0 or step % FP_EVERY == 0


def _ddp_class() -> type | None:
    try:
        from torch.nn.parallel import DistributedDataParallel
    except Exception:  # noqa: BLE001  (a torch built without distributed)
        return None
    return DistributedDataParallel


def _wrappers_around(
    models: list[torch.nn.Module], ddp: type
) -> dict[int, tuple[torch.nn.Module, str]]:
    """id(model) -> (the DDP wrapper that holds it, its path inside wrapper.module), for
    watched models inside a DDP the script did not hand over: one pass over the objects the
    garbage collector tracks, at attach, in a distributed job only."""
    import gc

    wanted = {id(m): m for m in models}
    out: dict[int, tuple[torch.nn.Module, str]] = {}
    try:
        wrappers = [o for o in gc.get_objects() if isinstance(o, ddp)]
    except Exception:  # noqa: BLE001
        return out
    for w in wrappers:
        inner = getattr(w, "module", None)
        if not isinstance(inner, torch.nn.Module):
            continue
        for path, m in inner.named_modules():
            if id(m) in wanted and id(m) not in out:
                out[id(m)] = (w, path)
    return out


def _fsdp_classes() -> tuple[type, ...]:
    """FSDP (FullyShardedDataParallel) and FSDP2 (`fully_shard`: FSDPModule) wrappers."""
    try:
        from torch.distributed import fsdp
    except Exception:  # noqa: BLE001
        return ()
    return tuple(
        c
        for c in (
            getattr(fsdp, "FullyShardedDataParallel", None),
            getattr(fsdp, "FSDPModule", None),
        )
        if isinstance(c, type)
    )


class RanksProbe(Probe):
    name = "ranks"
    provides: ClassVar[tuple[str, ...]] = (
        RANKS_DDP,
        RANKS_PARAM_FP,
        RANKS_BUFFER_FP,
        RANKS_BYPASS,
        RANKS_SYNC,
        RANKS_SAVE,
        RANKS_LOADER,
        RANKS_COLLECTIVES,
        RANKS_SAMPLER,
    )

    def __init__(self) -> None:
        super().__init__()
        self.info: RankInfo | None = None
        # (watched model prefix, its DDP wrapper, the name prefix of the wrapped module's
        # params: "<prefix>module." when the wrapper is watched, "<prefix>" when the module is)
        self._wrappers: list[tuple[str, torch.nn.Module, str]] = []
        self._ddp: type | None = None
        # (watched model prefix, the DDP wrapper found around it in memory, the model's path
        # inside wrapper.module): a model whose own forward the wrapper does not call
        # (Lightning's training_step), fingerprinted when each fingerprint step opens.
        self._held: list[tuple[str, torch.nn.Module, str]] = []
        self._through = 0  # forwards of a DDP wrapper under way (its module is called inside)
        self._step = 1
        self._fp_due = False
        self._fp_done: set[str] = set()
        self._bypass: dict[str, Any] | None = None  # this step's bypassed forwards
        self._bypass_source: str | None = None
        self._ddp_facts: dict[str, Any] | None = None
        self._sharded: list[str] = []  # models with an FSDP wrapper (sharded: not fingerprinted)
        self._samplers: dict[str, dict[str, Any]] = {}
        self._models: dict[str, torch.nn.Module] = {}
        # This step's training forwards through a DDP wrapper, with and without gradient
        # synchronization, its backward passes, and the line of its last unsynced forward.
        self._synced = 0
        self._unsynced = 0
        self._backwards = 0
        self._unsynced_source: str | None = None
        self._forward_synced: bool | None = None  # the last forward through a wrapper's
        self._backward_synced: bool | None = None  # ... as the step's last backward found it
        self._located = 0  # steps whose unsynced forwards were located
        self._saves: list[dict[str, Any]] = []  # this step's torch.save calls
        self._save_step = 0
        self._saved = 0
        self._listening_saves = False
        self._loader_tries = 0
        self._calls: dict[str, Any] | None = None  # this step's collectives
        self._calls_step = 0
        self._save_listener: Any = None
        self._coll_listener: Any = None
        self._thread: int | None = None  # the thread that attached: the training loop's
        self._rec: Recorder | None = None

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self.info = detect()
        if self.info is None:
            return  # a single process: nothing to compare across ranks
        ddp = self._ddp = _ddp_class()
        if ddp is None:
            return
        self._models = dict(ctx.models)
        unwrapped = []
        for prefix, model in ctx.eager_models().items():
            if isinstance(model, ddp) and isinstance(
                getattr(model, "module", None), torch.nn.Module
            ):
                self._wrappers.append((prefix, model, f"{prefix}module."))
            else:
                unwrapped.append((prefix, model))
        fsdp = _fsdp_classes()
        self._sharded = [
            prefix.rstrip(".") or "<model>"
            for prefix, model in ctx.models.items()
            if fsdp and any(isinstance(m, fsdp) for m in model.modules())
        ]
        for prefix, wrapper, base in self._wrappers:
            self._hook_wrapper(wrapper)
            self.handles.append(
                wrapper.module.register_forward_pre_hook(
                    ctx.hook("probe ranks", self._make_inner(prefix, base, rec))
                )
            )
        held = _wrappers_around([m for _, m in unwrapped], ddp) if unwrapped else {}
        for prefix, model in unwrapped:
            if id(model) in held:
                wrapper, path = held[id(model)]
                if path:  # deeper inside: its forward is not the wrapper's
                    self._held.append((prefix, wrapper, path))
                    continue
                # wrapper.module itself (td.watch(model.module)): as a watched wrapper's
                self._wrappers.append((prefix, wrapper, prefix))
                self._hook_wrapper(wrapper)
                self.handles.append(
                    model.register_forward_pre_hook(
                        ctx.hook("probe ranks", self._make_inner(prefix, prefix, rec))
                    )
                )
                continue
            # The module inside a DDP wrapper the script did not hand over (the framework
            # integrations watch the unwrapped module): found at its first training forwards,
            # where DDP names itself the active wrapper.
            handle: list[Any] = []
            handle.append(
                model.register_forward_pre_hook(
                    ctx.hook("probe ranks", self._make_finder(prefix, rec, handle))
                )
            )
            self.handles.extend(handle)
        self._step = ctx.state.step
        self._fp_due = bool(self._wrappers) and fingerprint_step(self._step)
        self._note_ddp(self._step, rec)
        self._rec = rec
        self._thread = threading.get_ident()
        self._save_listener = lambda f: ctx.guard.call("probe ranks", self._on_save, f)
        self._coll_listener = lambda op: ctx.guard.call("probe ranks", self._on_collective, op)
        _SAVE_LISTENERS.append(self._save_listener)
        _COLLECTIVE_LISTENERS.append(self._coll_listener)
        self._listening_saves = True
        acquire(_SAVE_PATCH)
        acquire(_COLLECTIVE_PATCH)

    def detach(self) -> None:
        super().detach()
        if self._listening_saves:
            self._listening_saves = False
            if self._save_listener in _SAVE_LISTENERS:
                _SAVE_LISTENERS.remove(self._save_listener)
            if self._coll_listener in _COLLECTIVE_LISTENERS:
                _COLLECTIVE_LISTENERS.remove(self._coll_listener)
            release(_SAVE_PATCH)
            release(_COLLECTIVE_PATCH)

    # -- per step ---------------------------------------------------------------------------
    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self.info is None:
            return
        self._step = step
        self._through = 0
        self._fp_due = bool(self._wrappers) and fingerprint_step(step)
        self._fp_done.clear()
        self._bypass = None
        self._synced = self._unsynced = self._backwards = 0
        self._unsynced_source = None
        self._backward_synced = None
        self._forward_synced = None
        self._watch_samplers(step, rec)
        if self._loader_tries < LOADER_TRIES and (self._wrappers or self._held or self._sharded):
            self._find_loader_line(step, rec)
        if self._held and fingerprint_step(step):
            self._note_ddp(step, rec)
            for prefix, _wrapper, _path in self._held:
                model = self._models.get(prefix)
                if model is not None:
                    self._fingerprint(prefix, model, rec)

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        self._backwards += 1
        self._backward_synced = self._forward_synced

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self._bypass is not None:
            rec.record(step, RANKS_BYPASS, self._bypass)
            self._bypass = None
        if self._unsynced or self._synced > 1:
            # last: whether the forward before the step's last backward synchronized (its
            # gradients, and all accumulated since the previous all-reduce, are exchanged)
            last = self._backward_synced
            sync: dict[str, Any] = {
                "synced": self._synced,
                "unsynced": self._unsynced,
                "backwards": self._backwards,
                "last": last,
            }
            if last is False:
                self._located += 1
                sync["source"] = self._unsynced_source
            rec.record(step, RANKS_SYNC, sync)

    def _find_loader_line(self, step: int, rec: Recorder) -> None:
        """Where the training loop's DataLoader was built (TD604's line), looked for from
        inside the loop: at the step opens after the first (the loop's optimizer.step())."""
        if step < 2 or not any(r() is not None for r in _ITERATED):
            return
        self._loader_tries += 1
        found = loader_line.find(skip=2)
        if found is not None:
            self._loader_tries = LOADER_TRIES
            rec.record(step, RANKS_LOADER, found)

    def _own_thread(self) -> bool:
        """The timeline is written from the training thread only: a record from another
        thread (an asynchronous checkpointer's save) could race its flush."""
        return threading.get_ident() == self._thread

    # -- collectives ------------------------------------------------------------------------
    def _on_collective(self, op: str) -> None:
        """A torch.distributed collective on the job's whole group (before it runs: a rank
        that then hangs in it has it recorded). One on a subgroup is not seen: the ranks
        outside that group rightly never call it."""
        if self.info is None or not self._own_thread():
            return
        step = self._step
        if self._calls is None or step != self._calls_step:
            self._calls, self._calls_step = {"n": 0, "calls": []}, step
        self._calls["n"] += 1
        if len(self._calls["calls"]) < MAX_CALLS:
            self._calls["calls"].append([op, user_source(skip=1)])
        if self._rec is not None:
            self._rec.record(
                step,
                RANKS_COLLECTIVES,
                {"n": self._calls["n"], "calls": list(self._calls["calls"])},
            )

    # -- torch.save -------------------------------------------------------------------------
    def _on_save(self, f: Any) -> None:
        """A torch.save call of this process (from the wrapper, before the file is written)."""
        import os

        if self.info is None or self._saved >= MAX_SAVES or not self._own_thread():
            return  # (another thread's save, an async checkpointer's: not into the timeline)
        if not isinstance(f, str | os.PathLike):
            return  # a file object or a buffer (Lightning's, HF's): no path to compare
        self._saved += 1
        step = self._step
        if step != self._save_step:
            self._saves, self._save_step = [], step
        self._saves.append(
            {
                "path": os.path.abspath(os.fsdecode(f)),
                "host": _host(),
                "source": user_source(skip=1),
            }
        )
        if self._rec is not None:
            self._rec.record(step, RANKS_SAVE, list(self._saves))

    # -- DDP --------------------------------------------------------------------------------
    def _hook_wrapper(self, wrapper: torch.nn.Module) -> None:
        ctx = self.ctx
        assert ctx is not None
        self.handles.append(wrapper.register_forward_pre_hook(ctx.hook("probe ranks", self._enter)))
        self.handles.append(wrapper.register_forward_hook(ctx.hook("probe ranks", self._leave)))

    def _make_finder(self, prefix: str, rec: Recorder, handle: list[Any]):
        found: list[Any] = []  # the inner hook, once the wrapper is found
        tries = [0]

        def pre(module: torch.nn.Module, args: Any) -> None:
            if found:
                found[0](module, args)
                return
            if not self._training(module):
                return
            tries[0] += 1
            active = getattr(self._ddp, "_active_ddp_module", None)
            if active is None or getattr(active, "module", None) is not module:
                if tries[0] >= FIND_FORWARDS and handle:
                    handle[0].remove()  # not in a DDP wrapper: no hook on its forwards
                return
            self._wrappers.append((prefix, active, prefix))
            self._hook_wrapper(active)  # from its next forward on (this one is under way)
            self._fp_due = fingerprint_step(self._step)
            found.append(self._make_inner(prefix, prefix, rec))
            found[0](module, args)

        return pre

    def _enter(self, module: torch.nn.Module, _args: Any) -> None:
        self._through += 1
        if self._through != 1 or not self._training(module):
            return
        # DDP decides at this forward whether the next backward all-reduces (no_sync() sets
        # the flag False): read where DDP reads it.
        if getattr(module, "require_backward_grad_sync", True):
            self._synced += 1
            self._forward_synced = True
        else:
            self._unsynced += 1
            self._forward_synced = False
            if self._located < MAX_SYNC_SOURCES:
                self._unsynced_source = user_source(skip=1) or "?"

    def _leave(self, _module: torch.nn.Module, _args: Any, _output: Any) -> None:
        self._through = max(0, self._through - 1)

    def _training(self, module: torch.nn.Module) -> bool:
        ctx = self.ctx
        return (
            ctx is not None
            and module.training
            and torch.is_grad_enabled()
            and not ctx.state.validating
        )

    def _make_inner(self, prefix: str, base: str, rec: Recorder):
        def pre(module: torch.nn.Module, _args: Any) -> None:
            if not self._training(module):
                return
            if self._through == 0 and getattr(self._ddp, "_active_ddp_module", None) is None:
                if self._bypass_source is None:
                    self._bypass_source = user_source(skip=1) or "?"
                if self._bypass is None:
                    self._bypass = {"count": 0, "source": self._bypass_source}
                self._bypass["count"] += 1
            if self._fp_due and prefix not in self._fp_done:
                self._fp_done.add(prefix)
                self._note_ddp(self._step, rec)
                self._fingerprint(base, module, rec)

        return pre

    def _fingerprint(self, base: str, module: torch.nn.Module, rec: Recorder) -> None:
        step = self._step
        for tensors, signal_name in (
            (list(module.named_parameters()), RANKS_PARAM_FP),
            (list(module.named_buffers()), RANKS_BUFFER_FP),
        ):
            names = []
            ts = []
            for n, t in tensors:
                if t.layout is not torch.strided or not t.is_floating_point() or t.numel() == 0:
                    continue
                names.append(f"{base}{n}")
                ts.append(t.detach())
            if not ts:
                continue
            for dev_names, dev_ts in by_device(names, ts).values():
                with torch.no_grad():
                    l2 = torch._foreach_norm(dev_ts, 2, dtype=torch.float32)
                    l1 = torch._foreach_norm(dev_ts, 1, dtype=torch.float32)
                keys = [f"{n}#2" for n in dev_names] + [f"{n}#1" for n in dev_names]
                rec.defer(step, signal_name, torch.stack([*l2, *l1]), keys=keys)

    def _note_ddp(self, step: int, rec: Recorder) -> None:
        facts: dict[str, Any] = {}
        entries = [(p, w, b, w.module, "") for p, w, b in self._wrappers]
        entries += [
            (p, w, p, self._models[p], path) for p, w, path in self._held if p in self._models
        ]
        for prefix, wrapper, base, inner, path in entries:
            synced = getattr(wrapper, "_module_parameters", None)
            unsynced: list[str] | None = None
            if isinstance(synced, list):
                ids = {id(p) for p in synced}
                unsynced = [
                    f"{base}{n}"
                    for n, p in inner.named_parameters()
                    if p.requires_grad and id(p) not in ids
                ]
            within = f"{path}." if path else ""
            ignored = [
                n[len(within) :]
                for n in getattr(wrapper, "parameters_to_ignore", None) or ()
                if str(n).startswith(within)
            ]
            facts[prefix.rstrip(".") or "<model>"] = {
                "kind": "ddp",
                "broadcast_buffers": bool(
                    getattr(wrapper, "forward_sync_buffers", None)
                    if hasattr(wrapper, "forward_sync_buffers")
                    else getattr(wrapper, "broadcast_buffers", True)
                ),
                "find_unused_parameters": bool(getattr(wrapper, "find_unused_parameters", False)),
                "unsynced": unsynced,
                "ignored": sorted(f"{base}{n}" for n in ignored),
            }
        for name in self._sharded:
            facts.setdefault(name, {"kind": "fsdp"})
        if facts and facts != self._ddp_facts:
            self._ddp_facts = facts
            rec.record(step, RANKS_DDP, facts)

    # -- DistributedSampler -----------------------------------------------------------------
    def _watch_samplers(self, step: int, rec: Recorder) -> None:
        changed = False
        found = 0
        for i, ref in enumerate(list(_ITERATED)):
            loader = ref()
            if loader is None:
                continue
            state = _sampler_state(loader)
            if state is None:
                continue
            found += 1
            if found > MAX_LOADERS:
                break
            key = f"loader{i}"
            if self._samplers.get(key) != state:
                self._samplers[key] = state
                changed = True
        if changed:
            rec.record(step, RANKS_SAMPLER, {k: dict(v) for k, v in self._samplers.items()})


# -- torch.save, while some rank's probe listens ---------------------------------------------
_SAVE_LISTENERS: list[Any] = []


def _save_of(original: Any) -> Any:
    import functools

    @functools.wraps(original)
    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        for listener in list(_SAVE_LISTENERS):
            try:
                listener(f)
            except Exception:  # noqa: BLE001  (never in the user's way)
                pass
        return original(obj, f, *args, **kwargs)

    return save


def _save_patches() -> list[Patch]:
    import torch.serialization

    return [Patch(torch, "save", _save_of), Patch(torch.serialization, "save", _save_of)]


_SAVE_PATCH = PatchSet("torch.save", _save_patches)


# -- torch.distributed collectives, while some rank's probe listens -------------------------
_COLLECTIVE_LISTENERS: list[Any] = []
COLLECTIVES = frozenset(
    (
        "all_reduce",
        "broadcast",
        "barrier",
        "monitored_barrier",
        "all_gather",
        "all_gather_into_tensor",
        "all_gather_single",
        "all_gather_coalesced",
        "all_reduce_coalesced",
        "reduce_scatter_single",
        "reduce",
        "reduce_scatter",
        "reduce_scatter_tensor",
        "gather",
        "scatter",
        "all_to_all",
        "all_to_all_single",
        "broadcast_object_list",
        "gather_object",
        "scatter_object_list",
    )
)


def _default_group_of(original: Any) -> Any:
    """`distributed_c10d._get_default_group`, which each collective called on the job's whole
    group (group None or WORLD) calls before it runs: the collective is its caller. Listening
    there, not on `dist.all_reduce` itself, leaves the script's own call chain (and whatever it
    wrapped around torch's collectives) untouched; a collective on a subgroup never asks for
    the default group."""
    import functools
    import sys

    import torch.distributed.distributed_c10d as c10d

    here = c10d.__file__
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)

    @functools.wraps(original)
    def _get_default_group() -> Any:
        if _COLLECTIVE_LISTENERS and not compiling():
            try:
                f = sys._getframe(1)
                if f.f_code.co_name == "_group_or_default_group" and f.f_back is not None:
                    f = f.f_back
                op = f.f_code.co_name
                if op in COLLECTIVES and f.f_code.co_filename == here:
                    for listener in list(_COLLECTIVE_LISTENERS):
                        listener(op)
            except Exception:  # noqa: BLE001  (never in the user's way)
                pass
        return original()

    return _get_default_group


def _collective_patches() -> list[Patch]:
    import torch.distributed.distributed_c10d as c10d

    return [Patch(c10d, "_get_default_group", _default_group_of, optional=True)]


_COLLECTIVE_PATCH = PatchSet("torch.distributed collectives", _collective_patches)


def _host() -> str:
    import socket

    return socket.gethostname()


def _sampler_state(loader: Any) -> dict[str, Any] | None:
    """{epoch, shuffle, batches, seed, dataset} of a loader's DistributedSampler, else None."""
    try:
        from torch.utils.data.distributed import DistributedSampler
    except Exception:  # noqa: BLE001
        return None
    try:
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, DistributedSampler):
            sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        if not isinstance(sampler, DistributedSampler):
            return None
        try:
            batches: int | None = len(loader)
        except TypeError:
            batches = None
        return {
            "epoch": int(sampler.epoch),
            "shuffle": bool(sampler.shuffle),
            "seed": int(sampler.seed),
            "batches": batches,
            "dataset": type(loader.dataset).__name__,
        }
    except Exception:  # noqa: BLE001  (an odd sampler is described by nothing)
        return None

"""Gradients: which params got one, their norms, and gradients carried over from the last step."""

from __future__ import annotations

from itertools import chain, compress
from operator import and_, attrgetter, itemgetter, not_, or_
from typing import ClassVar

import torch

from ..timeline import signal
from ._param_stats import GRAD, REQUIRES_GRAD, GradNorms, Held, keyed, present, shared
from ._param_stats import norms as param_norms
from .base import Probe, Recorder

_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_LAYOUT = attrgetter("layout")

GRADS_NONE = signal("grads.none", "trainable params whose .grad is None when step() runs")
GRADS_CLEARED = signal(
    "grads.cleared", "params that received a gradient in backward but had none at step()"
)
GRADS_NORM = signal("grads.norm", "per param: ||grad|| when step() runs (after unscale)")
GRADS_CARRIED = signal(
    "grads.carried",
    "per param: the smallest ||grad|| already in .grad before a backward of the step (0 when "
    "it was zeroed or None before one of them; a param of the params inventory that the "
    "record leaves out is 0)",
)
GRADS_STEPPED = signal(
    "grads.stepped", "params held by an optimizer whose step() ran in the step (sampled steps)"
)
GRADS_OBSERVED = signal("grads.observed", "1 on steps where the gradient probe looked")


class GradsProbe(Probe):
    name = "grads"
    provides: ClassVar[tuple[str, ...]] = (
        GRADS_NONE,
        GRADS_CLEARED,
        GRADS_NORM,
        GRADS_CARRIED,
        GRADS_STEPPED,
        GRADS_OBSERVED,
    )
    # Armed only by a sampled prepare(); on_step_end of that step disarms it.
    sampled_only = frozenset(
        {
            "prepare",
            "on_backward",
            "on_after_backward",
            "on_optimizer_pre_step",
            "on_pre_step",
            "on_hand_step",
            "on_step_end",
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._armed = False
        # The trainable (name, param) of this sampled step, and the two split (C-level maps
        # over them: a Python loop costs ~1 us a param, 10,000 params on some models).
        self._params: list[tuple[str, torch.Tensor]] = []
        self._names: list[str] = []
        self._tensors: list[torch.Tensor] = []
        self._received: set[str] = set()  # had a gradient after a backward of this step
        self._none: set[str] = set()  # .grad None when its optimizer stepped
        self._stepped: set[str] = set()  # held by an optimizer that stepped in this step
        # The last sampled step's stepped set and its sorted list (the same on most steps).
        self._stepped_seen: set[str] = set()
        self._stepped_sorted: list[str] = []
        # grads.carried of the step being observed: per param (found None by a backward of the
        # step, norm queued by one), and the trained names the params inventory lacks.
        self._carried_step = -1
        self._carried_seen: tuple[list[bool], list[bool]] = ([], [])
        self._outside: tuple[list[tuple[str, torch.Tensor]], frozenset[str]] | None = None

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._reset()
        if not sampled:
            return
        ctx = self.ctx
        assert ctx is not None
        self._armed = True
        # The walk's own (name, param) tuples: no new tuple per param (GC-tracked, 10,000 a
        # sampled step on some models).
        named = ctx.named_params()
        trainable = list(map(REQUIRES_GRAD, map(_SECOND, named)))
        self._params = named if all(trainable) else list(compress(named, trainable))
        self._names = list(map(_FIRST, self._params))
        self._tensors = list(map(_SECOND, self._params))

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        """Before the gradients of this backward are added: what is in .grad now was left by
        earlier passes. A gradient is carried across optimizer steps only if no backward of
        the step found it zeroed, so the smallest norm over the step's passes is kept."""
        if not self._armed:
            return
        names, grads = self._names, list(map(GRAD, self._tensors))
        has = present(grads)
        # A None gradient is a 0 left out of the record (readers take a trainable param
        # missing from it as 0): 10,000 zeros a sampled step on some models otherwise.
        # Explicit zeros only where a missing key would not read as 0: a param the params
        # inventory does not list, or one whose norm an earlier backward of the step queued
        # (min(norm, 0) is 0).
        seen = self._carried_seen if self._carried_step == step else None
        self._carried_step = step
        if seen is not None:
            # A later backward of the step: a param already found zeroed stays 0.
            was_none, queued = seen
            defer = [h and not z for h, z in zip(has, was_none)]
            zeros = [q and not h for h, q in zip(has, queued)]
            seen = ([z or not h for h, z in zip(has, was_none)], list(map(or_, queued, defer)))
        else:
            defer, zeros = has, None
            seen = (list(map(not_, has)), has)
        self._carried_seen = seen
        if not all(has) or (zeros is not None and any(zeros)):
            current = rec.timeline.get(step, GRADS_CARRIED)
            carried = dict(current) if isinstance(current, dict) else {}
            explicit = self._explicit_zeros(rec)
            if explicit:
                none = compress(names, map(not_, has))
                carried.update(dict.fromkeys((n for n in none if n in explicit), 0.0))
            if zeros is not None:
                carried.update(dict.fromkeys(compress(names, zeros), 0.0))
            rec.record(step, GRADS_CARRIED, carried)  # also marks the step observed
        if not all(defer):
            names, grads = list(compress(names, defer)), list(compress(grads, defer))
        if grads:
            grads = _strided_all(grads)
            parts = param_norms(grads)
            for (_, norms), keys in zip(parts, keyed(names, grads, parts)):
                rec.defer(step, GRADS_CARRIED, norms, keys=keys, reduce=min)

    def on_after_backward(self, step: int, rec: Recorder) -> None:
        if not self._armed:
            return
        has = present(list(map(GRAD, self._tensors)))
        self._received.update(compress(self._names, has))
        ctx = self.ctx
        if ctx is not None and ctx.state.hand_steps_expected:
            # A hand-written update reads .grad after this backward (and often zeroes it
            # before the next one, where the update is seen): measure the gradient it applies
            # now. The last backward of the step overwrites: accumulated grads are applied.
            self._check(
                step, list(compress(self._names, has)), list(compress(self._tensors, has)), rec
            )

    def on_hand_step(
        self,
        step: int,
        sampled: bool,
        names: list[str],
        source: tuple[str, int] | None,
        rec: Recorder,
    ) -> None:
        self._stepped.update(names)  # the params a hand-written update applied a gradient to

    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        """The gradients this optimizer is about to apply (after any GradScaler unscale)."""
        if not sampled:
            return
        assert self.ctx is not None
        # As the params probe read it just before, in this event (or checked again).
        stats = shared(self.ctx)
        held = stats.held_now(opt, step)
        self._stepped.update(held.names)
        self._check(step, held.names, held.params, rec, opt, held.others, held)

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        if not sampled:
            return
        ctx = self.ctx
        assert ctx is not None
        rec.record(step, GRADS_OBSERVED, 1)
        # Trainable params that no optimizer holds (TD103): do they get gradients?
        held = set(
            map(
                id, chain.from_iterable(g["params"] for o in ctx.optimizers for g in o.param_groups)
            )
        )
        named = ctx.named_params()
        tensors = list(map(_SECOND, named))
        ids = list(map(id, tensors))
        if held.issuperset(ids):
            return  # every param is held (the common case: checked in C, no loop)
        free = list(map(and_, map(not_, map(held.__contains__, ids)), map(REQUIRES_GRAD, tensors)))
        if any(free):
            params = list(compress(named, free))
            self._check(step, list(map(_FIRST, params)), list(map(_SECOND, params)), rec)

    def _check(
        self,
        step: int,
        names: list[str],
        tensors: list[torch.Tensor],
        rec: Recorder,
        opt: torch.optim.Optimizer | None = None,
        others: list[torch.Tensor] | None = None,
        held: Held | None = None,
    ) -> None:
        grads = list(map(GRAD, tensors))
        has = present(grads)
        complete = all(has)
        if not complete:
            self._none.update(compress(names, map(not_, has)))
            names, tensors = list(compress(names, has)), list(compress(tensors, has))
            grads = list(compress(grads, has))
        if not grads:
            return
        strided = _strided_all(grads)
        like = None
        if held is not None and complete and strided is grads and self.ctx is not None:
            like = shared(self.ctx).held_lengths(held, step)  # every param's gradient
        parts = param_norms(strided, like)
        if opt is not None and self.ctx is not None:
            # The numerics probe reads them (its finiteness check, the same event): complete
            # when they are every strided gradient the optimizer holds.
            complete = strided is grads and not any(
                g is not None and g.layout is torch.strided for g in map(GRAD, others or ())
            )
            shared(self.ctx).share_grad_norms(opt, GradNorms(tensors, parts, complete))
        for (_, norms), keys in zip(parts, keyed(names, strided, parts)):
            rec.defer(step, GRADS_NORM, norms, keys=keys)

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self._armed:
            rec.record(step, GRADS_NONE, sorted(self._none))
            stepped = self._stepped
            if stepped != self._stepped_seen:  # sorted again only when it changed
                self._stepped_seen, self._stepped_sorted = stepped, sorted(stepped)
            rec.record(step, GRADS_STEPPED, list(self._stepped_sorted))
            cleared = sorted(self._none & self._received)
            if cleared:
                rec.record(step, GRADS_CLEARED, cleared)
        self._reset()

    def _explicit_zeros(self, rec: Recorder) -> frozenset[str]:
        """Names of this step's trained params that the params inventory (facts["params"],
        read by TD106 for the missing keys) does not list: their 0 is written.
        Cached per (name, param) list: the walk's own list while the params do not change."""
        names, params = self._names, self._params
        cached = self._outside
        if cached is not None and cached[0] is params:
            return cached[1]
        inventory = rec.timeline.facts.get("params") or {}
        outside = frozenset(n for n in names if n not in inventory)
        self._outside = (params, outside)
        return outside

    def models_dropped(self, prefixes: list[str], rec: Recorder) -> None:
        """Watched models the script dropped were freed (Doctor._dropped): the cached walk's
        list (its params) goes with them."""
        self._outside = None

    def _reset(self) -> None:
        if not (self._armed or self._params or self._received or self._none or self._stepped):
            return  # nothing to clear: the common, unsampled step
        self._armed = False
        self._params = []
        self._names = []
        self._tensors = []
        self._received = set()
        self._none = set()
        self._stepped = set()


def _strided_all(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """`grads` itself when every one is strided (checked in C), else each one `_strided`."""
    if set(map(_LAYOUT, grads)) == {torch.strided}:
        return grads
    return [_strided(g) for g in grads]


def _strided(grad: torch.Tensor) -> torch.Tensor:
    """A dense tensor with the same norm: sparse gradients (nn.Embedding(sparse=True),
    SparseAdam) have no norm kernel; the norm of their (coalesced) stored values is theirs."""
    if grad.layout is torch.strided:
        return grad
    if grad.is_sparse:
        return grad.coalesce().values()
    return grad.values()  # compressed layouts (CSR/CSC/BSR/BSC) hold each entry once

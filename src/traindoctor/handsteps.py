"""Weight updates written by hand: the step clock of a loop that has no torch optimizer.

`for p in model.parameters(): p.data.add_(p.grad, alpha=-lr)`, `with torch.no_grad(): p -= lr *
p.grad`, `w.data -= lr * w.grad.data`: the loop updates the weights itself, no `step()` hook ever
runs. Such an update is seen at the next backward (or at close): a trained param changed in
place since the end of the previous backward, that backward gave it a gradient, and no torch
optimizer holding a watched param stepped in between. Two host-side reads tell "changed in
place", neither syncs the device nor touches a value:

- `p._version`, bumped by every in-place op on `p` or on a view of it (`p -= ...`, `p.sub_`,
  `p.copy_`, `torch._foreach_add_(params, ...)`);
- for `p.data.<op>_(...)`, which writes through a tensor with a version counter of its own, the
  `.data` tensors handed out since the backward (`_patches.DataWatch`): one whose `_version`
  moved was written; an assignment `p.data = t` counts too.

Params that got no gradient in that backward (a target or EMA copy refreshed with `copy_`,
`lerp_`, `mul_().add_()`) are never a step. The tracker retires for good, with its patch, once a
torch optimizer that holds a watched param steps before any hand-written update was seen: the
run has an optimizer, whose hooks keep the clock (and no update is counted twice).
"""

from __future__ import annotations

from itertools import compress
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import optimizer as optim_module

from . import _patches
from ._mode_stack import OursPaused

if TYPE_CHECKING:
    from .probes.base import RunContext


class HandSteps:
    """Finds the hand-written updates of one run's watched params."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.active = False  # watching for hand-written updates
        self.count = 0  # hand-written updates seen so far
        self._watch: _patches.DataWatch | None = None
        self._hook: Any = None
        self._pre_hook: Any = None
        # (began, ended) of the step driver: an optimizer holding watched params runs step()
        # (its closure's backward passes evaluate that step; L-BFGS updates the weights in
        # place between them, which is no update by hand).
        self.on_step: tuple[Any, Any] | None = None
        self._holds: dict[int, bool] = {}  # id(optimizer) -> holds a watched param
        self._opt_stepped = False  # such an optimizer stepped since the last backward
        # Before the running backward: (names, params, their .grad, the grads' versions), in
        # parallel lists (no tuple per param: 10,000 on some models, each kept past the step).
        self._pre: tuple[list[str], list[torch.Tensor], list[Any], list[int]] | None = None
        # After the last backward: (names, params, their versions, ids given a gradient).
        self._snap: tuple[list[str], list[torch.Tensor], list[int], set[int]] | None = None
        # The trained params of named_params() version N: (N, flags, names, params).
        self._trained: tuple[int, list[bool], list[str], list[torch.Tensor]] | None = None
        # watch(model) without an optimizer: called with each torch optimizer holding a watched
        # param at its first step (the Doctor adopts it; the global hook stays on until close).
        self.adopt: Any = None

    @property
    def expected(self) -> bool:
        """Whether the open step will likely be closed by a hand-written update: probes then
        measure the gradients and the update around it, as they do around optimizer.step()."""
        ctx = self.run.attached
        return self.active and (self.count > 0 or ctx is None or not ctx.optimizers)

    def start(self) -> None:
        if self.active:
            return
        self._watch = _patches.DataWatch()
        _patches.add_data_watch(self._watch)
        self._hook = optim_module.register_optimizer_step_post_hook(self._on_optimizer_step)
        self._pre_hook = optim_module.register_optimizer_step_pre_hook(self._on_optimizer_pre)
        self.active = True

    @property
    def armed(self) -> bool:
        """Whether the Doctor must call before_backward (active, or a hook left to remove)."""
        return self.active or self._hook is not None

    def stop(self) -> None:
        """Remove the `.data` property and the global optimizer hook; the clock is off."""
        self._retire()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._pre_hook is not None:
            self._pre_hook.remove()
            self._pre_hook = None

    def _retire(self) -> None:
        # Not the global hook: torch iterates over the hooks' dict while it calls them.
        self.active = False
        self._pre = self._snap = self._trained = None
        if self._watch is not None:
            _patches.remove_data_watch(self._watch)
            self._watch = None

    # -- events ---------------------------------------------------------------------------
    def _holds_watched(self, opt: Any) -> bool:
        holds = self._holds.get(id(opt))
        if holds is None:
            ids = set(map(id, self._params()[1]))
            holds = any(id(p) in ids for g in opt.param_groups for p in g["params"])
            self._holds[id(opt)] = holds
        return holds

    def _on_optimizer_pre(self, opt: Any, args: Any, kwargs: Any) -> None:
        """Any torch optimizer's step starts (global hook, removed with the post-step one)."""
        try:
            if self.active and self.on_step is not None and self._holds_watched(opt):
                self.on_step[0](opt)
        except Exception as exc:  # noqa: BLE001  (a global hook: never into the user's step)
            self.run.guard.record("hand steps", exc)

    def _on_optimizer_step(self, opt: Any, args: Any, kwargs: Any) -> None:
        """Any torch optimizer's step (global hook, watched or not)."""
        try:
            if not self._holds_watched(opt):
                return  # an optimizer of something else (an input perturbation, say)
            if self.on_step is not None:
                self.on_step[1](opt)
            self._opt_stepped = True
            if self.count == 0:
                self._retire()  # the optimizer keeps the step clock: nothing to do here
                if self.adopt is not None:
                    self.adopt(opt)  # adopting one already adopted does nothing
        except Exception as exc:  # noqa: BLE001  (a global hook: never into the user's step)
            self.run.guard.record("hand steps", exc)
            self._retire()

    def before_backward(self) -> tuple[list[str], tuple[str, int] | None] | None:
        """At the start of a backward: the hand-written update since the last one, if any, as
        (names of the params it wrote, the caller's (file, line) of a `.data` write or None).
        Then note each trained param's gradient, to see which ones this backward feeds."""
        if not self.active:
            if self.adopt is None:
                self.stop()  # retired inside an optimizer step: the global hook goes now
            return None
        # Our own reads, 3 per param: not through the loss-code modes still on the stack.
        with OursPaused():
            found = self.take()
            names, params = self._params()
            grads = list(map(_GRAD, params))
            self._pre = names, params, grads, [g._version if g is not None else 0 for g in grads]
        return found

    def after_backward(self) -> None:
        """The gradients are in: remember the versions of the params, and which params this
        backward (or an earlier one of the same step: gradient accumulation) fed."""
        pre, self._pre = self._pre, None
        if pre is None or self._watch is None:
            return
        names, params, grads, versions = pre
        received = {
            id(p)
            for p, g, v, now in zip(params, grads, versions, map(_GRAD, params))
            if now is not None and (now is not g or now._version != v)
        }
        if self._snap is not None:
            received |= self._snap[3]  # an earlier micro-batch of this step fed them
        self._snap = (names, params, list(map(_VERSION, params)), received)
        watch = self._watch
        watch.clear()
        if watch.ids != received:
            watch.ids = set(received)

    def take(self) -> tuple[list[str], tuple[str, int] | None] | None:
        """The hand-written update since the last backward (see before_backward), consumed."""
        snap, self._snap = self._snap, None
        stepped, self._opt_stepped = self._opt_stepped, False
        watch = self._watch
        if watch is None:
            return None
        handed, assigned = watch.handed, watch.assigned
        watch.clear()
        if snap is None or stepped:
            return None
        names, params, versions, received = snap
        changed = {id(p) for p, v, now in zip(params, versions, map(_VERSION, params)) if now != v}
        source = None
        for pid, tensor, filename, line in handed:
            if tensor._version:
                changed.add(pid)
                if source is None and filename is not None and pid in received:
                    source = (filename, line)
        changed |= assigned
        changed &= received
        if not changed:
            return None
        self.count += 1
        if source is not None or self.count >= 3:
            watch.where = False  # the line is known (or never comes): no more frame reads
        return sorted(n for n, p in zip(names, params) if id(p) in changed), source

    def _params(self) -> tuple[list[str], list[torch.Tensor]]:
        """(names, params) of the watched params that require grad, as named_params() lists
        them (kept while that list and the flags are the same: read in C)."""
        ctx = self.run.attached
        if ctx is None:
            return [], []
        named = ctx.named_params()
        flags = list(map(_REQUIRES_GRAD, map(_SECOND, named)))
        cached = self._trained
        if cached is not None and cached[0] == ctx.named_version and cached[1] == flags:
            return cached[2], cached[3]
        kept = named if all(flags) else list(compress(named, flags))
        names, params = list(map(_FIRST, kept)), list(map(_SECOND, kept))
        self._trained = (ctx.named_version, flags, names, params)
        return names, params


_GRAD = attrgetter("grad")
_VERSION = attrgetter("_version")
_REQUIRES_GRAD = attrgetter("requires_grad")
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)

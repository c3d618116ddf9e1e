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

from typing import TYPE_CHECKING, Any

import torch
from torch.optim import optimizer as optim_module

from . import _patches

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
        self._holds: dict[int, bool] = {}  # id(optimizer) -> holds a watched param
        self._opt_stepped = False  # such an optimizer stepped since the last backward
        # Before the running backward: (name, param, its .grad, the grad's version).
        self._pre: list[tuple[str, torch.Tensor, Any, int]] | None = None
        # After the last backward: (names by id, params, their versions, ids given a gradient).
        self._snap: tuple[dict[int, str], list[torch.Tensor], list[int], set[int]] | None = None

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

    def _retire(self) -> None:
        # Not the global hook: torch iterates over the hooks' dict while it calls them.
        self.active = False
        self._pre = self._snap = None
        if self._watch is not None:
            _patches.remove_data_watch(self._watch)
            self._watch = None

    # -- events ---------------------------------------------------------------------------
    def _on_optimizer_step(self, opt: Any, args: Any, kwargs: Any) -> None:
        """Any torch optimizer's step (global hook, watched or not)."""
        try:
            holds = self._holds.get(id(opt))
            if holds is None:
                ids = {id(p) for _, p in self._params()}
                holds = any(id(p) in ids for g in opt.param_groups for p in g["params"])
                self._holds[id(opt)] = holds
            if not holds:
                return  # an optimizer of something else (an input perturbation, say)
            self._opt_stepped = True
            if self.count == 0:
                self._retire()  # the optimizer keeps the step clock: nothing to do here
        except Exception as exc:  # noqa: BLE001  (a global hook: never into the user's step)
            self.run.guard.record("hand steps", exc)
            self._retire()

    def before_backward(self) -> tuple[list[str], tuple[str, int] | None] | None:
        """At the start of a backward: the hand-written update since the last one, if any, as
        (names of the params it wrote, the caller's (file, line) of a `.data` write or None).
        Then note each trained param's gradient, to see which ones this backward feeds."""
        if not self.active:
            self.stop()  # retired inside an optimizer step: the global hook goes now
            return None
        found = self.take()
        params = self._params()
        pre = []
        for name, p in params:
            g = p.grad
            pre.append((name, p, g, g._version if g is not None else 0))
        self._pre = pre
        return found

    def after_backward(self) -> None:
        """The gradients are in: remember the versions of the params, and which params this
        backward (or an earlier one of the same step: gradient accumulation) fed."""
        pre, self._pre = self._pre, None
        if pre is None or self._watch is None:
            return
        received = {
            id(p)
            for _, p, g, v in pre
            if (now := p.grad) is not None and (now is not g or now._version != v)
        }
        if self._snap is not None:
            received |= self._snap[3]  # an earlier micro-batch of this step fed them
        names = {id(p): n for n, p, _, _ in pre}
        params = [p for _, p, _, _ in pre]
        self._snap = (names, params, [p._version for p in params], received)
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
        changed = {id(p) for p, v in zip(params, versions) if p._version != v}
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
        return sorted(names[i] for i in changed), source

    def _params(self) -> list[tuple[str, torch.Tensor]]:
        ctx = self.run.attached
        if ctx is None:
            return []
        return [(n, p) for n, p in ctx.named_params() if p.requires_grad]

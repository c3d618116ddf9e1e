"""Steps of torch optimizers that traindoctor was not given.

`td.watch(teacher, opt)`, then a student built with an optimizer of its own, or a test-time
adaptation with a new `SGD`: the backward passes go on, the watched optimizer stops, and the
steps are taken by an optimizer no hook of ours is on. One global post-step hook
(`torch.optim.optimizer.register_optimizer_step_post_hook`, on from attach to close) counts the
steps of every optimizer that is not a watched one, so that TD105 can tell "nothing steps"
from "something traindoctor does not watch steps". A watched optimizer's step returns at the
first test (`in` the watched list: a C-level identity check, no Python call); nothing is read from any tensor and no
optimizer state is touched.

The fact `unwatched_optimizers`: per such optimizer (in the order of their first steps), its
class, the steps counted, the open step of traindoctor's clock at its first and last step,
whether it holds a param of a watched model, and the user's line of its first step().
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from torch.optim import optimizer as optim_module

from ._source import user_source

if TYPE_CHECKING:
    from .probes.base import RunContext

MAX_TRACKED = 64  # optimizers recorded (one built per task: the first ones name the kind)


class UnwatchedSteps:
    """Counts the steps of torch optimizers that are not among the watched ones."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self._hook: Any = None
        # id(optimizer) -> (weak reference, its published slot)
        self._slots: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._published: list[dict[str, Any]] = []

    def start(self) -> None:
        if self._hook is None:
            self._hook = optim_module.register_optimizer_step_post_hook(self._on_step)

    def stop(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_step(self, opt: Any, args: Any, kwargs: Any) -> None:
        """Any torch optimizer's step (global hook)."""
        ctx = self.run.attached
        if ctx is None or opt in ctx.optimizers:  # identity: Optimizer has no __eq__
            return  # a watched optimizer: its own hooks keep the clock
        try:
            entry = self._slots.get(id(opt))
            if entry is None or entry[0]() is not opt:
                if len(self._published) >= MAX_TRACKED:
                    return
                names = ctx.param_names
                slot = {
                    "class": type(opt).__name__,
                    "steps": 0,
                    "first": self.run.state.step,
                    "last": 0,
                    "holds_watched": any(
                        id(p) in names for g in opt.param_groups for p in g["params"]
                    ),
                    "source": user_source(skip=1),
                }
                entry = (weakref.ref(opt), slot)
                self._slots[id(opt)] = entry
                self._published.append(slot)
                self.run.rec.timeline.facts["unwatched_optimizers"] = self._published
            slot = entry[1]
            slot["steps"] += 1
            slot["last"] = self.run.state.step
        except Exception as exc:  # noqa: BLE001  (a global hook: never into the user's step)
            self.run.guard.record("unwatched steps", exc)

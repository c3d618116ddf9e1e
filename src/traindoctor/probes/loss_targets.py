"""Class-index targets out of range, checked before the loss runs (TD511).

`cross_entropy` / `nll_loss` given a target outside [0, C) (an `ignore_index` excepted) raise
`IndexError: Target 255 is out of bounds` on CPU inside the first call, before any backward:
zero-code mode has not attached yet (it attaches at the first backward) and the loss-inputs
probe's deferred reads never come. On CUDA the same call only queues a kernel that trips a
device-side assert; the error surfaces later, elsewhere, and the device can no longer be
read. So this watch checks the targets on the host side of the call, before the original runs:
from the start of a zero-code script until attach, and on the structural steps after it
(at most MAX_CHECKS calls a run), each check one reduction read back (one host sync on a GPU).
An offending call is recorded as a `loss_targets_out_of_range` event (the loss, its line, the
class count, the offending values and their counts); the call then runs unchanged and its
exception reaches the user as it is.
"""

from __future__ import annotations

import torch

from .._source import user_source_with_code
from .base import RunContext
from .loss_inputs import _KWARGS, _arg, add_loss_listener, remove_loss_listener

CLASS_LOSSES = ("cross_entropy", "nll_loss")
MAX_CHECKS = 64  # calls checked a run (the first ones): each is one read back
MAX_EVENTS = 8
MAX_VALUES = 6  # offending values named, the most frequent first


class _TargetWatch:
    """Listens to the shared loss patch for one run (loss_inputs.add_loss_listener)."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.refs = 0
        self.checks = 0
        self.events = 0
        self.seen: set[tuple[str, str | None, int]] = set()

    def loss_call(self, fn: str, args: tuple, kwargs: dict) -> None:
        run = self.run
        if fn not in CLASS_LOSSES or run.state.closed or self.checks >= MAX_CHECKS:
            return None
        attached = run.attached
        if attached is not None and run.state.step > run.budget.structural_steps:
            return None
        run.guard.call("loss target watch", self._check, fn, args, kwargs)
        return None

    def _check(self, fn: str, args: tuple, kwargs: dict) -> None:
        inp = _arg(args, kwargs, 0, "input")
        tgt = _arg(args, kwargs, 1, "target")
        if type(inp) is not torch.Tensor or type(tgt) is not torch.Tensor:
            return  # a subclass (DTensor, ...) may turn the read back into a collective
        if not inp.is_floating_point() or inp.dim() < 1 or tgt.is_floating_point():
            return
        if tgt.dim() != inp.dim() - 1 or tgt.numel() == 0 or tgt.dtype == torch.bool:
            return
        self.checks += 1
        classes = int(inp.shape[1 if inp.dim() >= 2 else 0])
        ignore = _arg(args, kwargs, _KWARGS[fn]["ignore_index"], "ignore_index")
        ignore = -100 if ignore is None else int(ignore)
        with torch.no_grad():
            t = tgt.detach().reshape(-1).long()
            bad = ((t < 0) | (t >= classes)) & (t != ignore)
            n_bad = int(bad.sum())  # the one read back of a call whose targets are fine
            if n_bad == 0:
                return
            values, counts = torch.unique(t[bad], return_counts=True)
            kept = t[t != ignore]
            lo, hi = (int(v) for v in torch.stack([kept.min(), kept.max()]).tolist())
            order = counts.argsort(descending=True)[:MAX_VALUES]
            top = [[int(values[i]), int(counts[i])] for i in order.tolist()]
            n_valid = int(kept.numel())
        src = user_source_with_code(skip=1) or {}
        key = (fn, src.get("source"), classes)
        if key in self.seen or self.events >= MAX_EVENTS:
            return
        self.seen.add(key)
        self.events += 1
        self.run.rec.event(
            self.run.state.step,
            "loss_targets_out_of_range",
            fn=fn,
            classes=classes,
            input_shape=list(inp.shape),
            target_shape=list(tgt.shape),
            device=str(tgt.device),
            ignore_index=ignore,
            out_of_range=n_bad,
            targets=int(t.numel()),
            counted=n_valid,
            target_min=lo,
            target_max=hi,
            values=top,
            attached=self.run.attached is not None,
            source=src.get("source"),
            code=src.get("code"),
        )

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            remove_loss_listener(self)
            _watches.pop(id(self.run), None)


class _Handle:
    def __init__(self, watch: _TargetWatch) -> None:
        self._watch: _TargetWatch | None = watch

    def remove(self) -> None:
        if self._watch is not None:
            self._watch.release()
            self._watch = None


_watches: dict[int, _TargetWatch] = {}


def watch_loss_targets(run: RunContext) -> _Handle:
    """Check class-index targets before the class losses run, recording offending calls into
    `run`'s timeline, until the returned handle's `remove()`. One listener per run however
    often it is asked (the zero-code session from the start, the loss-inputs probe at attach)."""
    watch = _watches.get(id(run))
    if watch is None or watch.run is not run:
        watch = _watches[id(run)] = _TargetWatch(run)
        add_loss_listener(watch)
    watch.refs += 1
    return _Handle(watch)

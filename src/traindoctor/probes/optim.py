"""Optimizers: param groups, learning rates, where step() is called, and which params they hold."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import compress, islice
from operator import not_
from typing import ClassVar

import torch

from .._release import DroppedOptimizer
from .._source import is_user_file, relpath, user_source
from ..timeline import signal
from .base import AttachContext, Probe, Recorder

OPTIM_LR = signal("optim.lr", "per param group ('opt0/group0'): learning rate at the step")
OPTIM_STEP = signal(
    "optim.step",
    "1 when the primary optimizer's step() ran in this step, or a hand-written update of the "
    "trained params (no torch optimizer) closed it",
)
OPTIM_HAND_STEP = signal(
    "optim.hand_step", "1 when a hand-written update of the trained params closed the step"
)
OPTIM_ANY_STEP = signal(
    "optim.any_step",
    "number of step() calls of any watched optimizer in this step (a GAN's, layer-wise "
    "optimizers': the step clock follows the primary one only)",
)
# Params per optimizer whose .grad is watched for fresh gradients (host reads only).
ACTIVITY_PARAMS = 4


class OptimProbe(Probe):
    name = "optim"
    provides: ClassVar[tuple[str, ...]] = (OPTIM_LR, OPTIM_STEP, OPTIM_HAND_STEP, OPTIM_ANY_STEP)
    provides_events: ClassVar[tuple[str, ...]] = ("optimizer_layout", "optimizer_step", "hand_step")
    provides_facts: ClassVar[tuple[str, ...]] = ("optimizers", "optimizer_activity")

    def __init__(self) -> None:
        super().__init__()
        # ids of optimizer tensors outside the watched models that were seen with a gradient
        self._unnamed_with_grad: set[int] = set()
        # ... and those looked at on a sampled step after their optimizer had stepped: "never a
        # gradient" is measured only for these (an optimizer built per task, used for a few
        # steps between two sampled steps, was never looked at while it trained).
        self._unnamed_looked: set[int] = set()
        self._last_layout: tuple[list[str], int] | None = None
        # The user's `td.watch(model, optimizer)` line: where the optimizer was handed over.
        self._watched_at: str | None = None
        # Which tensors each optimizer held when `describe()` last ran.
        self._layout: tuple = ()
        # Per optimizer (by position): steps taken, backward passes that brought its params
        # fresh gradients since its last step, the most seen before one step, and the last
        # gradient signature seen (ids and version counters of a few .grad tensors).
        self._activity: list[dict[str, int]] = []
        self._grad_sig: list[tuple] = []
        # Order of the optimizers' last steps, and the ids each holds (cached by count): a
        # fresh gradient that another optimizer stepped since is not pending (a first phase's
        # optimizer whose params a fine-tuning optimizer now steps).
        self._step_seq = 0
        self._last_seq: dict[int, int] = {}
        self._held: dict[int, tuple[int, set[int]]] = {}

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        if ctx.mode == "watch":
            # Optimizers built before watch() carry no creation site (only zero-code mode sees
            # the constructor run); the watch() call is the closest user line that names them.
            self._watched_at = user_source(skip=1)
        self.describe(rec)

    def describe(self, rec: Recorder) -> None:
        """Facts about every optimizer: groups, their hyper-parameters and the params they hold."""
        ctx = self.ctx
        assert ctx is not None
        names = ctx.param_names
        optimizers = []
        before = rec.timeline.facts.get("optimizers") or []
        for oi, opt in enumerate(ctx.optimizers):
            if isinstance(opt, DroppedOptimizer) and oi < len(before):
                # dropped by the script (a zero-code sweep's finished trial): as it was
                optimizers.append(before[oi])
                continue
            groups = []
            for gi, group in enumerate(opt.param_groups):
                params = group["params"]
                groups.append(
                    {
                        "id": f"opt{oi}/group{gi}",
                        "lr": _float(group.get("lr")),
                        "initial_lr": _float(group.get("initial_lr")),
                        "weight_decay": _float(group.get("weight_decay")),
                        "eps": _float(group.get("eps")),
                        "params": [names.get(id(p)) for p in params],
                        "unnamed": [
                            {
                                "shape": list(p.shape),
                                "requires_grad": bool(p.requires_grad),
                                "had_grad": id(p) in self._unnamed_with_grad,
                                "looked": id(p) in self._unnamed_looked,
                            }
                            for p in params
                            if id(p) not in names
                        ],
                    }
                )
            optimizers.append(
                {
                    "class": type(opt).__name__,
                    "groups": groups,
                    "created_at": ctx.created_at.get(id(opt)),
                    "watched_at": self._watched_at,
                }
            )
        rec.timeline.facts["optimizers"] = optimizers
        # When the layout changes, an event with the step: rules date findings from it.
        held = sorted({n for o in optimizers for g in o["groups"] for n in g["params"] if n})
        stale = sum(
            1 for o in optimizers for g in o["groups"] for u in g["unnamed"] if u["requires_grad"]
        )
        if (held, stale) != self._last_layout:
            self._last_layout = (held, stale)
            rec.event(ctx.state.step, "optimizer_layout", held=held, stale=stale)
        self._layout = _layout(ctx.optimizers)
        # One optimizer: on_after_backward returns at once (the step clock is its activity)
        # and on_post_step counts its step, so the bus leaves both per-optimizer handlers out
        # of unsampled steps (one place less where our code runs after torch's optimizer
        # step); a second one (zero-code mode finds optimizers late) puts them back.
        only = (
            frozenset({"on_after_backward", "on_optimizer_post_step"})
            if len(ctx.optimizers) < 2
            else frozenset()
        )
        if only != self.sampled_only:
            self.sampled_only = only
            ctx.bus.refresh()

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        ctx = self.ctx
        assert ctx is not None
        if sampled and (
            rec.timeline.get(step, "params.replaced") or _layout(ctx.optimizers) != self._layout
        ):
            # optimizer.add_param_group() after the structural steps (progressive unfreezing),
            # or model params replaced mid-run: describe again, or the added params would look
            # held by no optimizer (TD103) and the replaced ones would go unnoticed (TD111).
            # Only on sampled steps, after the params probe refreshed the names.
            self.describe(rec)
        if sampled:
            names = ctx.param_names
            seen = len(self._unnamed_with_grad), len(self._unnamed_looked)
            for oi, opt in enumerate(ctx.optimizers):
                stepped = oi < len(self._activity) and self._activity[oi]["steps"] > 0
                for group in opt.param_groups:
                    params = group["params"]
                    named = list(map(names.__contains__, map(id, params)))  # in C: 10,000 on
                    if all(named):  # some models, all named on most
                        continue
                    for p in compress(params, map(not_, named)):
                        if p.grad is not None:
                            self._unnamed_with_grad.add(id(p))
                        if stepped:
                            self._unnamed_looked.add(id(p))
            if (len(self._unnamed_with_grad), len(self._unnamed_looked)) != seen:
                # Tensors of an optimizer described earlier got their first gradient (a
                # zero-code run's second-phase optimizer, built before its first backward):
                # the fact's had_grad is written again, or TD111 reads them as never trained.
                self.describe(rec)
        for oi, opt in enumerate(ctx.optimizers):
            for gi, group in enumerate(opt.param_groups):
                lr, key = group.get("lr"), f"opt{oi}/group{gi}"
                if isinstance(lr, torch.Tensor):  # capturable/fused optimizers: no host sync
                    rec.defer(step, OPTIM_LR, lr.detach().reshape(()).float(), keys=[key])
                else:
                    rec.record(step, OPTIM_LR, _float(lr), key=key)
        if sampled or step <= ctx.budget.structural_steps:
            # Where the user calls step(); only on early and sampled steps (stack walks cost µs).
            src = user_source(skip=1)
            if src and not any(
                e.get("source") == src for e in rec.timeline.events("optimizer_step")
            ):
                rec.event(step, "optimizer_step", source=src)

    def on_post_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        rec.record(step, OPTIM_STEP, 1)
        ctx = self.ctx
        if ctx is not None and len(ctx.optimizers) == 1:
            self._stepped(0, step, rec)  # the one optimizer's step (see on_optimizer_post_step)

    # -- which optimizers step, and which get gradients they never apply -------------------
    def _slot(self, oi: int) -> dict[str, int]:
        while len(self._activity) <= oi:
            self._activity.append(
                {
                    "steps": 0,
                    "pending": 0,
                    "max_pending": 0,
                    "fresh": 0,
                    "since": 0,
                    "summed": 0,
                    "max_summed": 0,
                }
            )
            self._grad_sig.append(())
        return self._activity[oi]

    def on_optimizer_post_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        ctx = self.ctx
        assert ctx is not None
        optimizers = ctx.optimizers
        if len(optimizers) == 1:
            return  # one optimizer: its step is the primary step, counted in on_post_step
        oi = next((i for i, o in enumerate(optimizers) if o is opt), None)
        if oi is not None:
            self._stepped(oi, step, rec)

    def _stepped(self, oi: int, step: int, rec: Recorder) -> None:
        slot = self._activity[oi] if oi < len(self._activity) else self._slot(oi)
        slot["steps"] += 1
        slot["max_pending"] = max(slot["max_pending"], slot["pending"])
        slot["pending"] = 0
        slot["max_summed"] = max(slot["max_summed"], slot["summed"])
        slot["summed"] = 0
        self._step_seq += 1
        self._last_seq[oi] = self._step_seq
        rec.record(step, OPTIM_ANY_STEP, (rec.timeline.get(step, OPTIM_ANY_STEP) or 0) + 1)
        self._publish(rec)

    def _stepped_by_another(self, oi: int, params: list, sig: tuple) -> bool:
        """The changed gradients of optimizer `oi`'s signature are all of tensors that another
        optimizer, which stepped after `oi` last did, also holds."""
        ctx = self.ctx
        prev = self._grad_sig[oi]
        mine = self._last_seq.get(oi, 0)
        later = [j for j, q in self._last_seq.items() if j != oi and q > mine]
        if not later or ctx is None:
            return False
        changed = [
            k for k, x in enumerate(sig) if x is not None and (k >= len(prev) or prev[k] != x)
        ]
        held = [self._held_ids(j, ctx.optimizers[j]) for j in later if j < len(ctx.optimizers)]
        return bool(changed) and all(any(id(params[k]) in h for h in held) for k in changed)

    def _held_ids(self, j: int, opt: torch.optim.Optimizer) -> set[int]:
        count = sum(len(g["params"]) for g in opt.param_groups)
        cached = self._held.get(j)
        if cached is None or cached[0] != count:
            cached = (count, {id(p) for g in opt.param_groups for p in g["params"]})
            self._held[j] = cached
        return cached[1]

    def on_after_backward(self, step: int, rec: Recorder) -> None:
        """A backward that wrote new gradients into an optimizer's params since its last
        step: counted, so an optimizer whose step() is never reached is named (TD105)."""
        ctx = self.ctx
        assert ctx is not None
        if len(ctx.optimizers) < 2:
            # One optimizer: the step clock itself is its activity; only whether the passes of
            # a step add up in .grad is followed (sampled steps only: sampled_only).
            if ctx.optimizers:
                opt = ctx.optimizers[0]
                params = (p for g in opt.param_groups for p in g["params"] if p.requires_grad)
                self._slot(0)
                self._grad_sig[0] = self._summed(
                    0, self._grad_sig[0], _signature(islice(params, ACTIVITY_PARAMS))
                )
            return
        for oi, opt in enumerate(ctx.optimizers):
            slot = self._slot(oi)
            params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
            sig = _signature(params[:ACTIVITY_PARAMS])
            self._summed(oi, self._grad_sig[oi], sig)
            if (
                sig != self._grad_sig[oi]
                and any(x is not None for x in sig)
                and not self._stepped_by_another(oi, params, sig)
            ):
                if not slot["pending"]:
                    slot["since"] = step  # the first of the gradients not applied yet
                slot["pending"] += 1
                slot["fresh"] += 1
            self._grad_sig[oi] = sig
        self._publish(rec)

    def _summed(self, oi: int, prev: tuple, sig: tuple) -> tuple:
        """Whether this backward added its gradients onto those of an earlier pass since the
        optimizer's last step: every .grad it wrote is the same tensor one in-place add further
        (`_version` + 1) than after the previous pass. A .grad that was None (zero_grad()) or
        zeroed in between (`zero_()`: one more version) starts the sum again at 1. TD515 reads
        the most passes summed before one step ("max_summed")."""
        written = [
            k for k, x in enumerate(sig) if x is not None and (k >= len(prev) or prev[k] != x)
        ]
        if written:
            slot = self._activity[oi]
            onto = all(
                k < len(prev)
                and prev[k] is not None
                and prev[k][0] == sig[k][0]
                and sig[k][1] == prev[k][1] + 1
                for k in written
            )
            slot["summed"] = slot["summed"] + 1 if onto and slot["summed"] else 1
        return sig

    def _publish(self, rec: Recorder) -> None:
        # The live list (ints only): the stream serialises facts at each flush and writes a
        # changed one, so no copy per step is needed.
        rec.timeline.facts["optimizer_activity"] = self._activity

    def on_hand_step(
        self,
        step: int,
        sampled: bool,
        names: list[str],
        source: tuple[str, int] | None,
        rec: Recorder,
    ) -> None:
        """An update written by hand is the step's update: `optim.step` as for step()."""
        rec.record(step, OPTIM_STEP, 1)
        rec.record(step, OPTIM_HAND_STEP, 1)
        src = f"{relpath(source[0])}:{source[1]}" if source and is_user_file(source[0]) else None
        seen = rec.timeline.events("hand_step")
        if not seen or (src and not any(e.get("source") == src for e in seen)):
            # Where the weights are written (a `p.data` write; None for `p -= ...` in no_grad)
            rec.event(step, "hand_step", source=src, params=len(names))


def _signature(params: Iterable[torch.Tensor]) -> tuple:
    """Ids and version counters of a few params' .grad tensors (None where there is none)."""
    return tuple((id(p.grad), p.grad._version) if p.grad is not None else None for p in params)


def _layout(optimizers: list) -> tuple:
    """Identity of the tensors in every param group: cheap to compare, changes on
    add_param_group() or when a group's list of params is edited in place."""
    return tuple(tuple(tuple(map(id, g["params"])) for g in opt.param_groups) for opt in optimizers)


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None

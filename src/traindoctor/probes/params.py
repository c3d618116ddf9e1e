"""Parameters: the static inventory, identity changes, and measured updates ||Δθ|| per step."""

from __future__ import annotations

from collections import Counter
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, ClassVar, NamedTuple

import torch

from ..distributed.dtensor import local_all
from ..timeline import signal
from ._param_stats import (
    REQUIRES_GRAD,
    Packing,
    flat_lengths,
    nbytes,
    pack,
    shared,
)
from .base import AttachContext, Probe, Recorder, by_device

_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_PARAMETERS = attrgetter("_parameters")


class _Flat(NamedTuple):
    """A snapshot as one flat copy (many small CPU tensors) and how it was packed."""

    flat: torch.Tensor
    packing: Packing


PARAMS_UPDATE = signal(
    "params.update",
    "per param: ||θ_after - θ_before|| over one optimizer step (or hand-written update)",
)
PARAMS_NORM = signal("params.norm", "per param: ||θ|| before the step")
PARAMS_REPLACED = signal(
    "params.replaced", "names whose tensor is no longer the one seen at attach"
)

# Bytes of parameters copied on a sampled step to measure the update exactly; bigger models
# measure a subset (the largest tensors first are skipped so that many tensors are covered).
SNAPSHOT_BYTES = 256 * 2**20


class ParamsProbe(Probe):
    name = "params"
    provides: ClassVar[tuple[str, ...]] = (PARAMS_UPDATE, PARAMS_NORM, PARAMS_REPLACED)
    provides_events: ClassVar[tuple[str, ...]] = ("trainable", "models_added")
    provides_facts: ClassVar[tuple[str, ...]] = ("params", "module_types", "modules", "tied_params")
    # prepare() runs every step: it drops a snapshot whose step() never came (AMP skip).
    sampled_only = frozenset(
        {
            "on_pre_step",
            "on_optimizer_pre_step",
            "on_optimizer_post_step",
            "on_after_backward",
            "on_hand_step",
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._ids_at_attach: dict[str, int] = {}
        # id(optimizer) -> (names, params, copies) between its pre- and post-step hooks; the
        # copies: a list of tensors, or (one flat copy, its packing)
        self._snapshots: dict[int, tuple[list[str], list[torch.Tensor], Any]] = {}
        self._budget_left = SNAPSHOT_BYTES
        self._trainable: int | None = None
        # The last sampled step's (names, ids, requires_grad) and replaced names (on_pre_step).
        self._seen: tuple[list[Any], ...] | None = None
        self._replaced: list[str] = []
        # Params of the models the script dropped (a zero-code sweep's finished trials): gone
        # with their model, not removed from a live one (their inventory stays as it was).
        self._dropped: set[str] = set()

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        inventory = {}
        for name, p in ctx.named_params():
            self._ids_at_attach[name] = id(p)
            inventory[name] = _inventory_entry(p)
        rec.timeline.facts["params"] = inventory
        rec.timeline.facts["tied_params"] = _tied(ctx)
        self._note_trainable(1, inventory, rec)
        # Module classes by qualified name: rules tell layers apart by kind (an embedding's
        # gradient touches only the rows a batch uses, say).
        rec.timeline.facts["module_types"] = {
            (f"{prefix}{n}" if n else (prefix.rstrip(".") or "<model>")): type(m).__name__
            for prefix, model in ctx.models.items()
            for n, m in model.named_modules()
        }
        rec.timeline.facts["modules"] = {
            prefix: sorted(n for n, _ in m.named_modules() if n) for prefix, m in ctx.models.items()
        }

    def models_added(self, models: dict[str, torch.nn.Module], rec: Recorder) -> None:
        """Models watched from a later phase on (Doctor.add_models): their params join the
        inventory, the module facts and the replaced-tensor check. Not a `trainable` event:
        nothing was frozen or unfrozen, the run has more models."""
        ctx = self.ctx
        assert ctx is not None
        facts = rec.timeline.facts
        inventory = facts.setdefault("params", {})
        types, modules = facts.setdefault("module_types", {}), facts.setdefault("modules", {})
        names, new = ctx.param_names, []
        for prefix, model in models.items():
            for name, p in model.named_parameters():
                qualified = f"{prefix}{name}"
                if qualified in inventory or names.get(id(p), qualified) != qualified:
                    continue  # a watched model's param, held by the new one too
                new.append(qualified)
                self._ids_at_attach[qualified] = id(p)
                inventory[qualified] = _inventory_entry(p)
            for n, m in model.named_modules():
                types[f"{prefix}{n}" if n else prefix.rstrip(".")] = type(m).__name__
            modules[prefix] = sorted(n for n, _ in model.named_modules() if n)
        self._trainable = sum(1 for info in inventory.values() if info["requires_grad"])
        shared(ctx).names_version += 1
        rec.event(ctx.state.step, "models_added", models=list(models), params=new)

    def models_dropped(self, prefixes: list[str], rec: Recorder) -> None:
        """Watched models the script dropped were freed (Doctor._dropped): the inventory's
        names that no live model holds now went with them."""
        ctx = self.ctx
        assert ctx is not None
        live = set(map(_FIRST, ctx.named_params()))
        inventory = rec.timeline.facts.get("params", {})
        self._dropped.update(
            n for n, e in inventory.items() if n not in live and not e.get("removed")
        )

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        if not sampled:
            return  # walking the module tree every step would cost more than the budget
        ctx = self.ctx
        assert ctx is not None
        current = ctx.named_params()
        # The same names, tensors and requires_grad flags as at the last sampled step (read in
        # C): nothing below would change, but the replaced names are recorded again.
        seen = (
            list(map(_FIRST, current)),
            list(map(id, map(_SECOND, current))),
            list(map(REQUIRES_GRAD, map(_SECOND, current))),
        )
        if seen == self._seen:
            if self._replaced:
                rec.record(step, PARAMS_REPLACED, list(self._replaced))
            return
        self._seen = seen
        # Identity changes: a module whose params were replaced (e.g. `model.head = Linear(...)`).
        replaced = [
            name
            for name, p in current
            if name in self._ids_at_attach and self._ids_at_attach[name] != id(p)
        ]
        self._replaced = replaced
        if replaced:
            rec.record(step, PARAMS_REPLACED, list(replaced))
        inventory = rec.timeline.facts.get("params", {})
        # Names follow the model as it is now: a replaced tensor loses its name.
        ctx.param_names.clear()
        ctx.param_names.update({id(p): name for name, p in current})
        shared(ctx).names_version += 1  # the optimizers' held params are named again
        present = set()
        for name, p in current:
            present.add(name)
            entry = inventory.get(name)
            if entry is not None:
                entry["requires_grad"] = bool(p.requires_grad)
        for name, entry in inventory.items():
            if name not in present and name not in self._dropped:
                # The module was removed (fused away, deleted): no longer trainable here.
                entry["removed"] = True
                entry["requires_grad"] = False
        self._note_trainable(step, inventory, rec)

    def detach(self) -> None:
        if self.ctx is not None:
            shared(self.ctx).clear()  # its optimizer index holds the params
        self._snapshots.clear()
        super().detach()

    def _note_trainable(self, step: int, inventory: dict, rec: Recorder) -> None:
        """An event when the number of trainable params changes (freezing, unfreezing)."""
        count = sum(1 for info in inventory.values() if info["requires_grad"])
        if count != self._trainable:
            self._trainable = count
            rec.event(step, "trainable", count=count)

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._budget_left = SNAPSHOT_BYTES
        self._snapshots.clear()

    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        """Copy the params this optimizer holds, to measure exactly what its step changes."""
        if not sampled:
            return
        assert self.ctx is not None
        stats = shared(self.ctx)
        held = stats.held(opt)
        stats.mark(opt, step, held)  # the gradient probe reads the same list next, this event
        names, params = held.names, held.params
        lengths = stats.held_lengths(held, step)
        # (one dtype where the lengths are flat: no per-tensor read of the element size)
        size = sum(lengths) * params[0].element_size() if lengths else nbytes(params)
        if size <= self._budget_left:  # all of them (the usual case): no loop in Python
            self._budget_left -= size
        else:
            names, params, lengths = [], [], None
            for name, p in held.pairs():
                size = p.numel() * p.element_size()
                if size > self._budget_left:
                    continue
                self._budget_left -= size
                names.append(name)
                params.append(p)
        if params:
            # A copy on the device, no host sync; freed at on_optimizer_post_step. Under
            # no_grad: the params themselves, no detached view each.
            if lengths is None:
                lengths = flat_lengths(params)  # (a subset: the budget left some out)
            if lengths is not None:
                copies: Any = _Flat(*pack(params, lengths))
            else:
                with torch.no_grad():
                    copies = torch._foreach_mul(params, 1)
            self._snapshots[id(opt)] = (names, params, copies)

    def on_after_backward(self, step: int, rec: Recorder) -> None:
        """A loop that updates the weights by hand: copy the params that have a gradient after
        the step's first backward (no update can come before it), to measure the update when
        it is seen (on_hand_step). Keyed 0: no optimizer's id."""
        ctx = self.ctx
        assert ctx is not None
        if 0 in self._snapshots or not ctx.state.hand_steps_expected:
            return
        names, params = [], []
        for name, p in ctx.named_params():
            if not p.requires_grad or p.grad is None:
                continue
            size = p.numel() * p.element_size()
            if size > self._budget_left:
                continue
            self._budget_left -= size
            names.append(name)
            params.append(p)  # not detached: `p.data = t` swaps the storage a view would keep
        if params:
            with torch.no_grad():
                self._snapshots[0] = (names, params, torch._foreach_mul(params, 1))

    def on_hand_step(
        self,
        step: int,
        sampled: bool,
        names: list[str],
        source: tuple[str, int] | None,
        rec: Recorder,
    ) -> None:
        snap = self._snapshots.pop(0, None)
        if snap is None:
            return
        wanted = set(names)
        old_names, params, before = snap
        keep = [  # what the update wrote, still of the shape copied
            i for i, n in enumerate(old_names) if n in wanted and params[i].shape == before[i].shape
        ]
        if keep:
            self._measure(
                step,
                (
                    [old_names[i] for i in keep],
                    [params[i].detach() for i in keep],
                    [before[i] for i in keep],
                ),
                rec,
            )

    def on_optimizer_post_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        snap = self._snapshots.pop(id(opt), None)
        if snap is not None:
            self._measure(step, snap, rec)

    def _measure(
        self,
        step: int,
        snap: tuple[list[str], list[torch.Tensor], Any],
        rec: Recorder,
    ) -> None:
        names, params, before = snap
        if isinstance(before, _Flat):
            self._measure_flat(step, names, params, before.flat, before.packing, rec)
            return
        with torch.no_grad():
            norms = torch._foreach_norm(local_all(before))
            # In place on our copy: it becomes θ_before - θ_after, with no new allocation.
            torch._foreach_sub_(before, params)
            updates = torch._foreach_norm(local_all(before))
        # Grouped by device: a model split across devices cannot stack its norms in one tensor.
        for ns, ts in by_device(names, norms).values():
            rec.defer(step, PARAMS_NORM, torch.stack(ts).float(), keys=ns)
        for ns, ts in by_device(names, updates).values():
            rec.defer(step, PARAMS_UPDATE, torch.stack(ts).float(), keys=ns)

    def _measure_flat(
        self,
        step: int,
        names: list[str],
        params: list[torch.Tensor],
        before: torch.Tensor,
        packing: Packing,
        rec: Recorder,
    ) -> None:
        with torch.no_grad():
            norms = packing.norms(before)
            before.sub_(packing.pack(params))  # θ_before - θ_after (the step keeps shapes)
            updates = packing.norms(before)
        rec.defer(step, PARAMS_NORM, norms, keys=names)
        rec.defer(step, PARAMS_UPDATE, updates, keys=names)


def _tied(ctx: AttachContext) -> dict[str, dict[str, Any]]:
    """Params held under more than one name (one tensor in two modules: an output layer tied
    to the token embedding, `lm_head.weight = embed.weight`): {its name in the `params` fact:
    {"also": the other qualified names, "std": its std at attach}}. {} when none: one count
    of the modules' param ids (in C); the named walk runs only when one is held twice."""
    modules = ctx.watched_modules()
    if modules is None:
        return {}
    counts = Counter(map(id, chain.from_iterable(map(dict.values, map(_PARAMETERS, modules)))))
    counts.pop(id(None), None)  # a param registered as None (bias=False)
    twice = {i for i, n in counts.items() if n > 1}
    if not twice:
        return {}
    names = ctx.param_names
    out: dict[str, dict[str, Any]] = {}
    for prefix, model in ctx.models.items():
        for name, p in model.named_parameters(remove_duplicate=False):
            main = names.get(id(p))
            if id(p) not in twice or main is None or f"{prefix}{name}" == main:
                continue
            entry = out.get(main)
            if entry is None:
                with torch.no_grad():
                    std = float(p.detach().float().std()) if p.numel() > 1 else None
                entry = out[main] = {"also": [], "std": std}
            entry["also"].append(f"{prefix}{name}")
    return out


def _inventory_entry(p: torch.Tensor) -> dict[str, Any]:
    """One param's record in the `params` fact (at attach, and for a later phase's models)."""
    return {
        "shape": list(p.shape),
        "dtype": str(p.dtype).replace("torch.", ""),
        "numel": p.numel(),
        "requires_grad": bool(p.requires_grad),
    }

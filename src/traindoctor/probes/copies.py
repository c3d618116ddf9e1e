"""Copies: parameters kept out of every optimizer on purpose, and the copies that are evaluated.

A DQN target network, an EMA/teacher (BYOL, DINO, mean teacher), `AveragedModel`: a second
set of weights that no optimizer holds and that changes by copying or averaging the trained
weights, not by gradient. Measured here, never judged:

- at attach, which params no optimizer holds are bit-identical copies of params an optimizer
  holds (`load_state_dict(q.state_dict())`, `copy.deepcopy(model)`), fact `copies`;
- on sampled steps, a fingerprint (per-tensor norm) of those params, so a rule sees them change
  without any optimizer (signal `copies.norm`);
- on every step, whether params that had no gradient at the first observed step got one later
  (a branch that only some batches reach), fact `grads_seen_later`;
- in zero-code mode, the modules in the heap that are copies of the trained model but not
  watched (an EMA built before the loop and only evaluated): a forward hook on each counts the
  steps in which it runs without gradient, and fingerprints it and the trained model when such
  a run starts after a gap (an evaluation), signal `copies.evaluated`.

Costs: at attach, one fused norm of the trained and unheld params and one read-back (plus one
heap scan in zero-code mode); per step, one `p.grad is None` read per param still without a
gradient (usually none); per evaluation of a copy, two fused norms, read back with the step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .._heap import heap_roots
from .._source import user_source
from ..distributed.dtensor import local_all
from ..timeline import signal
from .base import AttachContext, Probe, Recorder, by_device

COPIES_NORM = signal(
    "copies.norm", "per param that no optimizer holds: ||θ|| on sampled steps (before step())"
)
COPIES_EVALUATED = signal(
    "copies.evaluated",
    "per evaluation of an unwatched copy (zero-code): {copy: ||θ_copy||, '<trained>': ||θ||} "
    "summed norms, at the step it ran",
)
TRAINED_KEY = "<trained>"
# Params without a gradient followed on every step (a conditional branch, a copy); more are
# followed on sampled steps only.
MAX_FOLLOWED = 256
MAX_OCCASIONS = 100


class CopiesProbe(Probe):
    name = "copies"
    provides: ClassVar[tuple[str, ...]] = (COPIES_NORM, COPIES_EVALUATED)
    provides_facts: ClassVar[tuple[str, ...]] = ("copies", "grads_seen_later")

    def __init__(self) -> None:
        super().__init__()
        self._unheld: list[tuple[str, torch.Tensor]] = []
        self._unheld_version = 0  # ctx.named_version when _unheld's tensors were taken
        self._followed: list[tuple[str, torch.Tensor]] | None = None  # no grad so far
        self._copies: dict[str, dict[str, Any]] = {}  # unwatched copy name -> its record
        self._modules: dict[str, torch.nn.Module] = {}

    # -- attach: which unheld params are copies ----------------------------------------------
    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        held = ctx.optimizer_param_ids()
        named = ctx.named_params()
        trained = [(n, p) for n, p in named if id(p) in held]
        # Trainable only: TD102/TD103 judge those, and a frozen backbone (requires_grad off,
        # e.g. under LoRA) is left alone instead of being fingerprinted every sampled step.
        self._unheld = [
            (n, p) for n, p in named if id(p) not in held and p.requires_grad and not p.is_meta
        ]
        self._unheld_version = ctx.named_version
        facts: dict[str, Any] = {"params": {}, "modules": {}}
        rec.timeline.facts["copies"] = facts
        rec.timeline.facts["grads_seen_later"] = {}
        if not trained:
            return
        finder = _CopyFinder(trained)
        facts["params"] = finder.sources(self._unheld)
        if ctx.mode != "zero-code":
            return
        # Copies whose evaluations are followed: watched models that no optimizer holds (a
        # copy called before the first backward, e.g. evaluated once before training) and
        # the top-level modules of the heap that are not watched.
        roots: list[tuple[str, torch.nn.Module, dict[str, str]]] = []
        for prefix, model in ctx.models.items():
            params = list(model.named_parameters())
            if prefix and params and not any(id(p) in held for _, p in params):
                matched = finder.sources(params)
                if matched:
                    roots.append((prefix.rstrip("."), model, matched))
        watched = {id(m) for model in ctx.models.values() for m in model.modules()}
        for module in _heap_roots(watched):
            matched = finder.sources(list(module.named_parameters()))
            if matched:
                roots.append((type(module).__name__, module, matched))
        for base, module, matched in roots:
            name, k = base, 1
            while name in self._copies:
                k += 1
                name = f"{base}{k}"
            self._copies[name] = record = {
                "class": type(module).__name__,
                "of": _model_of(next(iter(matched.values())), ctx),
                "params": sum(1 for _ in module.parameters()),
                "copied_params": len(matched),
                "steps_called": 0,
                "last_step": None,
                "first_step": None,
                "occasions": [],
                "source": None,
            }
            facts["modules"][name] = record
            self.handles.append(
                module.register_forward_hook(ctx.hook("probe copies", self._make_hook(name)))
            )

    # -- zero-code: evaluations of an unwatched copy ----------------------------------------
    def _make_hook(self, name: str):
        def hook(module: torch.nn.Module, _args: Any, _output: Any) -> None:
            if torch.is_grad_enabled() and module.training:
                return  # a training-time use (its output detached by the caller)
            ctx = self.ctx
            assert ctx is not None
            step = ctx.state.step
            record = self._copies[name]
            last = record["last_step"]
            if last == step:
                return  # another batch of the same run of calls
            record["steps_called"] += 1
            record["last_step"] = step
            if record["first_step"] is None:
                record["first_step"] = step
                record["source"] = user_source(skip=2)
            if last is not None and last >= step - 1:
                return  # called on consecutive steps: part of every step, not a new occasion
            if len(record["occasions"]) >= MAX_OCCASIONS:
                return
            record["occasions"].append(step)
            self._fingerprint(step, name, module, ctx.rec)

        return hook

    def _fingerprint(self, step: int, name: str, module: torch.nn.Module, rec: Recorder) -> None:
        assert self.ctx is not None
        copy = [p.detach() for p in module.parameters() if p.is_floating_point()]
        held = self.ctx.optimizer_param_ids()
        trained = [
            p.detach()
            for _, p in self.ctx.named_params()
            if id(p) in held and p.is_floating_point()
        ]
        for key, tensors in ((name, copy), (TRAINED_KEY, trained)):
            if not tensors:
                continue
            with torch.no_grad():
                norms = torch._foreach_norm(local_all(tensors))  # fused; read back with the step
                # Summed in float64: an EMA step of relative size 1e-3 must show in the sum.
                sums = [torch.stack(ts).double().sum() for ts in _by_device_list(norms)]
                total = sum(s.to(sums[0].device) for s in sums[1:]) + sums[0]
            rec.defer(step, COPIES_EVALUATED, total.reshape(1), keys=[key])

    # -- per step: unheld fingerprints and late gradients -------------------------------------
    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        ctx = self.ctx
        assert ctx is not None
        if self._followed is None:
            if not sampled:
                return
            # The first observed step: follow the trainable params without a gradient.
            self._followed = [
                (n, p) for n, p in ctx.named_params() if p.requires_grad and p.grad is None
            ][:MAX_FOLLOWED]
        elif self._followed:
            got = [n for n, p in self._followed if p.grad is not None]
            if got:
                seen = rec.timeline.facts["grads_seen_later"]
                for n in got:
                    seen.setdefault(n, step)
                self._followed = [(n, p) for n, p in self._followed if n not in seen]
        if sampled and ctx.named_params() and ctx.named_version != self._unheld_version:
            # Params replaced since (a VQ-VAE's EMA codebook re-assigned as a new nn.Parameter
            # in each forward): fingerprint the tensors no optimizer holds now, or the changes
            # of the new ones are never seen. Only when named_params() was walked again.
            self._unheld_version = ctx.named_version
            held = ctx.optimizer_param_ids()
            self._unheld = [
                (n, p)
                for n, p in ctx.named_params()
                if id(p) not in held and p.requires_grad and not p.is_meta
            ]
        if sampled and self._unheld:
            names = [n for n, p in self._unheld if p.is_floating_point()]
            tensors = [p.detach() for n, p in self._unheld if p.is_floating_point()]
            if tensors:
                with torch.no_grad():
                    norms = torch._foreach_norm(local_all(tensors))  # one fused kernel per device
                for ns, ts in by_device(names, norms).values():
                    rec.defer(step, COPIES_NORM, torch.stack(ts).float(), keys=ns)

    def detach(self) -> None:
        super().detach()
        self._modules.clear()
        self._unheld = []
        self._followed = None


def _by_device_list(norms: Any) -> list[list[torch.Tensor]]:
    out: dict[torch.device, list[torch.Tensor]] = {}
    for t in norms:
        out.setdefault(t.device, []).append(t)
    return list(out.values())


def _heap_roots(watched: set[int]) -> list[torch.nn.Module]:
    """Top-level modules with params that are not part of a watched model. One heap scan,
    shared with zero-code attach's inside `_heap.one_scan()`."""
    return [
        m
        for m in heap_roots()
        if id(m) not in watched and next(iter(m.parameters()), None) is not None
    ]


class _CopyFinder:
    """Which tensors are bit-identical copies of the trained params. Norms first (one fused
    norm and one read-back per set, at attach only), then `torch.equal` on equal norms only."""

    def __init__(self, trained: list[tuple[str, torch.Tensor]]) -> None:
        floats = [(n, p.detach()) for n, p in trained if _valued(p)]
        self._by_key: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
        for (n, p), norm in zip(floats, _norms([p for _, p in floats])):
            self._by_key.setdefault(_key(p, norm), []).append((n, p))

    def sources(self, candidates: list[tuple[str, torch.Tensor]]) -> dict[str, str]:
        """{candidate: the trained param it equals}; constant tensors are no evidence of a
        copy (a zero bias equals every zero bias) and are left out."""
        floats = [(n, p.detach()) for n, p in candidates if _valued(p)]
        if not floats or not self._by_key:
            return {}
        out: dict[str, str] = {}
        with torch.no_grad():
            for (c, p), norm in zip(floats, _norms([p for _, p in floats])):
                for n, q in self._by_key.get(_key(p, norm), ()):
                    if q is p or not torch.equal(p, q):
                        continue
                    flat = p.reshape(-1)
                    if not bool((flat == flat[0]).all()):
                        out[c] = n
                    break
        return out


def _valued(p: torch.Tensor) -> bool:
    """A float tensor of more than one value that holds data: a module on the meta device
    (a shape template for torch.func.functional_call, as in a hypernetwork) copies nothing."""
    return p.is_floating_point() and p.numel() > 1 and not p.is_meta


def _key(p: torch.Tensor, norm: float) -> tuple:
    return (tuple(p.shape), p.dtype, p.device, norm)


def _norms(tensors: list[torch.Tensor]) -> list[float]:
    if not tensors:
        return []
    out: list[float] = [0.0] * len(tensors)
    groups: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.device, []).append(i)
    with torch.no_grad():
        for idx in groups.values():
            norms = torch._foreach_norm(local_all([tensors[i] for i in idx]))
            values = torch.stack(norms).double().cpu().tolist()  # attach only: one sync
            for i, v in zip(idx, values):
                out[i] = v
    return out


def _model_of(param_name: str, ctx: AttachContext) -> str:
    for prefix in ctx.models:
        if prefix and param_name.startswith(prefix):
            return prefix.rstrip(".")
    return "<model>"

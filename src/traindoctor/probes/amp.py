"""GradScaler: the loss scale, the steps it skipped, and gradients used while still scaled.

Besides the scale and the skipped steps, the probe listens to the process-wide patches of
`clip_grad_norm_` / `clip_grad_value_` and `GradScaler.unscale_` / `step` (`_patches.py`) and
to the optimizers' step hooks, and records, at the moments that matter, the scaler's stage for
the optimizer concerned (`READY`: gradients still multiplied by the scale; `UNSCALED`):

- a clip function run on gradients that are still scaled;
- `optimizer.step()` called directly, not through `scaler.step()`, after a scaled backward;
- a scaled backward adding into gradients that `unscale_()` already divided (unscale_ per
  micro-batch, or before the last micro-batch, under gradient accumulation).

On skipped steps it says which params had non-finite gradients (one fused `_foreach_norm`
after unscale_, read back in the batched read-back), on sampled steps and on the steps that
follow a skipped one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .. import _patches
from .._source import call_site, relpath
from ..distributed.dtensor import local_all
from ..timeline import signal
from .base import AttachContext, Probe, Recorder

AMP_SCALE = signal("amp.scale", "GradScaler scale at the end of the step")
AMP_SKIPPED = signal("amp.skipped", "1 when the GradScaler skipped optimizer.step() in this step")
AMP_MISUSE = signal(
    "amp.misuse",
    "per misuse key ('clip_grad_norm_@train.py:40'): times in the step gradients were used while "
    "still multiplied by the GradScaler scale (see the amp_misuse events)",
)
AMP_MISUSE_NORM = signal(
    "amp.misuse.norm",
    "per misuse key: the scaled gradient size seen then (clip_grad_norm_'s total norm, the max "
    "|grad| for clip_grad_value_, the total norm stepped by a direct optimizer.step())",
)
AMP_MISUSE_SCALE = signal("amp.misuse.scale", "per misuse key: the GradScaler scale at that moment")
AMP_NONFINITE = signal(
    "amp.nonfinite",
    "per param, on skipped steps where it was measured: 1 if its gradient held inf/NaN at unscale_",
)

# Skipped steps localized per run (each stores one value per param): enough to name the layer.
MAX_LOCALIZED = 32


class AmpProbe(Probe):
    name = "amp"
    provides: ClassVar[tuple[str, ...]] = (
        AMP_SCALE,
        AMP_SKIPPED,
        AMP_MISUSE,
        AMP_MISUSE_NORM,
        AMP_MISUSE_SCALE,
        AMP_NONFINITE,
    )
    provides_events: ClassVar[tuple[str, ...]] = ("amp_misuse", "scaler_step")

    def __init__(self) -> None:
        super().__init__()
        self._rec: Recorder | None = None
        self._listening = False
        self._scaled_backward = False  # a scaled loss was backpropagated since the last step
        # optimizer id -> (optimizer, (file, line) of unscale_): unscaled and not stepped yet
        self._unscaled: dict[int, tuple[Any, tuple[str, int] | None]] = {}
        self._reported: set[str] = set()  # misuse keys that already have their event
        self._nonfinite: list[tuple[list[str], torch.Tensor]] = []  # this step, at unscale_
        self._localized = 0
        self._prev_skipped = False
        self._step_sources: set[str] = set()

    # -- attaching ------------------------------------------------------------------------
    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec
        _patches.add_amp_listener(self)
        self._listening = True

    def detach(self) -> None:
        if self._listening:
            _patches.remove_amp_listener(self)
            self._listening = False
        super().detach()

    # -- helpers --------------------------------------------------------------------------
    def _guarded(self, where: str, fn: Any, *args: Any) -> None:
        ctx = self.ctx
        if ctx is None or ctx.state.closed or ctx.state.validating:
            return
        key = f"probe {self.name}"
        if key in ctx.guard.disabled:
            return
        ctx.guard.call(key, fn, *args)
        if key in ctx.guard.disabled:
            ctx.guard.call(f"{key} detach", self.detach)

    def _scaler(self) -> Any:
        ctx = self.ctx
        return ctx.scaler if ctx is not None else None

    def _adopt(self, scaler: Any) -> bool:
        """Whether events of this scaler concern us. Zero-code mode adopts the first scaler seen
        (its scale() may have run before traindoctor attached)."""
        ctx = self.ctx
        assert ctx is not None
        if ctx.scaler is None and ctx.mode != "watch":
            ctx.scaler = scaler
            if ctx.scaler is None:
                ctx.scaler = scaler
        return ctx.scaler is None or ctx.scaler is scaler

    def _stage(self, opt: Any) -> str:
        if id(opt) in self._unscaled:
            return "UNSCALED"  # by the run's scaler or another one (one scaler per optimizer)
        scaler = self._scaler()
        states = getattr(scaler, "_per_optimizer_states", None)
        if isinstance(states, dict):
            state = states.get(id(opt))  # .get: indexing the defaultdict would add an entry
            stage = state.get("stage") if isinstance(state, dict) else None
            return getattr(stage, "name", "READY")
        return "UNSCALED" if id(opt) in self._unscaled else "READY"

    def _scale_tensor(self) -> torch.Tensor | None:
        scale = getattr(self._scaler(), "_scale", None)
        if isinstance(scale, torch.Tensor):
            return scale.detach().reshape(()).float().clone()
        return None

    def _opt_index(self, opt: Any) -> int | None:
        ctx = self.ctx
        assert ctx is not None
        return next((i for i, o in enumerate(ctx.optimizers) if o is opt), None)

    def _names(self, params: list[torch.Tensor]) -> list[str]:
        ctx = self.ctx
        assert ctx is not None
        names = ctx.param_names
        return [names[id(p)] for p in params if id(p) in names]

    def _misuse(
        self,
        what: str,
        site: tuple[str, int] | None,
        *,
        opt: Any,
        params: list[str],
        stage: str,
        size: torch.Tensor | None = None,
        **facts: Any,
    ) -> None:
        ctx, rec = self.ctx, self._rec
        assert ctx is not None and rec is not None
        step = ctx.state.step
        source = f"{relpath(site[0])}:{site[1]}" if site else None
        key = f"{what}@{source}"
        old = (rec.timeline.get(step, AMP_MISUSE) or {}).get(key, 0)
        rec.record(step, AMP_MISUSE, old + 1, key=key)
        if key not in self._reported:
            self._reported.add(key)
            oi = self._opt_index(opt)
            rec.event(
                step,
                "amp_misuse",
                key=key,
                what=what,
                source=source,
                optimizer=f"opt{oi}" if oi is not None else None,
                optimizer_class=type(opt).__name__ if opt is not None else None,
                params=params,
                stage=stage,
                **facts,
            )
        if size is not None:
            rec.defer(step, AMP_MISUSE_NORM, size.detach().reshape(1).float(), keys=[key])
        scale = self._scale_tensor()
        if scale is not None:
            rec.defer(step, AMP_MISUSE_SCALE, scale.reshape(1), keys=[key])

    # -- backward and optimizer events ----------------------------------------------------
    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        if not _patches.is_scaled(root):
            return  # not the output of an (enabled) GradScaler.scale()
        self._scaled_backward = True
        if not self._unscaled:
            return
        for key, (opt, site) in list(self._unscaled.items()):
            params = [p for g in opt.param_groups for p in g["params"]]
            with_grad = [p for p in params if p.grad is not None]
            del self._unscaled[key]
            if not with_grad:
                continue  # zeroed (set_to_none) since unscale_: nothing to mix with
            self._misuse(
                "backward_after_unscale",
                call_site(),
                opt=opt,
                params=self._names(with_grad),
                stage="UNSCALED",
                unscale_source=f"{relpath(site[0])}:{site[1]}" if site else None,
            )

    def on_optimizer_pre_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        if _patches.in_scaler_step() or not self._scaled_backward:
            return
        stage = self._stage(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        size = None
        if stage == "READY" and params:
            with torch.no_grad():
                size = torch.linalg.vector_norm(
                    torch.stack(torch._foreach_norm(local_all([_dense(p.grad) for p in params])))
                )
        self._misuse(
            "optimizer.step",
            call_site(),
            opt=opt,
            params=self._names(params),
            stage=stage,
            size=size,
        )

    def on_optimizer_post_step(
        self, step: int, sampled: bool, opt: torch.optim.Optimizer, rec: Recorder
    ) -> None:
        self._unscaled.pop(id(opt), None)

    # -- patched functions (called by _patches, outside the guard) ------------------------
    def clip_before(self, fn: str, params: list[torch.Tensor], threshold: Any) -> None:
        self._guarded("amp clip", self._clip, fn, params, threshold, None, True)

    def clip_after(self, fn: str, params: list[torch.Tensor], threshold: Any, result: Any) -> None:
        self._guarded("amp clip", self._clip, fn, params, threshold, result, False)

    def _clip(
        self, fn: str, params: list[torch.Tensor], threshold: Any, result: Any, before: bool
    ) -> None:
        if not self._scaled_backward:
            return
        scaler = self._scaler()
        if scaler is not None and not scaler.is_enabled():
            return
        if (fn == "clip_grad_value_") != before:
            return  # the value clip is measured before it clips, the norm clip after
        ctx = self.ctx
        assert ctx is not None
        ids = {id(p) for p in params}
        scaled_opt = None
        for opt in ctx.optimizers:
            if self._stage(opt) != "READY":
                continue
            if any(id(p) in ids for g in opt.param_groups for p in g["params"]):
                scaled_opt = opt
                break
        if scaled_opt is None:
            return
        grads = [_dense(p.grad) for p in params if p.grad is not None]
        if not grads:
            return
        size = None
        with torch.no_grad():
            if fn == "clip_grad_norm_" and isinstance(result, torch.Tensor):
                size = result
            elif fn == "clip_grad_value_":
                size = torch.stack(torch._foreach_norm(local_all(grads), float("inf"))).max()
        self._misuse(
            fn,
            call_site(),
            opt=scaled_opt,
            params=self._names([p for p in params if p.grad is not None]),
            stage="READY",
            size=size,
            threshold=_float(threshold),
        )

    def unscaled(self, scaler: Any, optimizer: Any) -> None:
        self._guarded("amp unscale_", self._on_unscaled, scaler, optimizer)

    def _on_unscaled(self, scaler: Any, optimizer: Any) -> None:
        if not scaler.is_enabled():
            return
        ours = self._adopt(scaler)
        if not ours and self._opt_index(optimizer) is None:
            return  # another scaler's unscale_ of an optimizer not watched
        ctx = self.ctx
        assert ctx is not None
        if not _patches.in_scaler_step():
            # Any scaler's: a GAN's second scaler unscales its own optimizer (its stage).
            self._unscaled[id(optimizer)] = (optimizer, call_site())
        if not ours:
            return
        step = ctx.state.step
        armed = ctx.budget.sampled(step) or self._prev_skipped
        if not armed or self._localized >= MAX_LOCALIZED:
            return
        names_by_id = ctx.param_names
        names, grads = [], []
        for g in optimizer.param_groups:
            for p in g["params"]:
                if p.grad is not None and id(p) in names_by_id:
                    names.append(names_by_id[id(p)])
                    grads.append(_dense(p.grad))
        if grads:
            with torch.no_grad():
                norms = torch.stack(torch._foreach_norm(local_all(grads)))
                self._nonfinite.append((names, (~torch.isfinite(norms)).float()))

    def scaler_step(self, scaler: Any, optimizer: Any, done: bool) -> None:
        if done:
            self._unscaled.pop(id(optimizer), None)
        else:
            self._guarded("amp scaler.step", self._on_scaler_step, scaler)

    def _on_scaler_step(self, scaler: Any) -> None:
        """Where the user calls scaler.step(): on early and sampled steps (stack walks cost µs)."""
        ctx, rec = self.ctx, self._rec
        assert ctx is not None and rec is not None
        if not self._adopt(scaler):
            return
        step = ctx.state.step
        if not ctx.budget.sampled(step):
            return
        site = call_site()
        if site is None:
            return
        source = f"{relpath(site[0])}:{site[1]}"
        if source not in self._step_sources:
            self._step_sources.add(source)
            rec.event(step, "scaler_step", source=source)

    # -- step boundary --------------------------------------------------------------------
    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        ctx = self.ctx
        assert ctx is not None
        self._scaled_backward = False
        nonfinite, self._nonfinite = self._nonfinite, []
        scaler = ctx.scaler
        if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
            return
        skipped = not rec.timeline.get(step, "optim.step")
        self._prev_skipped = skipped
        if skipped:
            rec.record(step, AMP_SKIPPED, 1)
            if nonfinite:
                self._localized += 1
            for names, mask in nonfinite:
                rec.defer(step, AMP_NONFINITE, mask, keys=names, reduce=max)
        scale = getattr(scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            # clone: update() changes _scale in place before the batched read-back
            rec.defer(step, AMP_SCALE, scale.detach().reshape(()).float().clone())


def _dense(grad: torch.Tensor) -> torch.Tensor:
    if grad.layout is torch.strided:
        return grad
    return grad.coalesce().values() if grad.is_sparse else grad.values()


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None

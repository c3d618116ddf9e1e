"""What a replay on a copy reproduces of the run besides its batches: the lr each step had, the
autocast of the forward, and the GradScaler (experiments/trials.py, recipe.py).

- **lr:** the optimizer probe records each group's lr at every step (`optim.lr`). A trial's
  step k runs at the lr the run's step k had (a schedule, a warm-up, an lr set by hand), times
  the arm's `lr_scale`. After the run's last recorded step the last lr is held, but for a
  warm-up the run ended inside (the lr still rising, below the groups' base lr): then the
  base lr, where the warm-up was heading (`check` stops after 20 steps, and a replay that
  held a warm-up's first lr would learn nothing with or without the fix). An arm with
  `constant_lr` (TD206/TD210: the lr the run had when it blew up) runs at one lr.
- **autocast:** replayed from the captured forward (runner.Batch.autocast, runner.autocast_of).
- **GradScaler:** a fresh one on the copy with the user's settings (init_scale, growth and
  backoff factors, growth_interval), never the user's own (its scale and growth tracker stay
  as the run left them). `Arm.scaled` replays TD204's misuse: clipping the scaled gradients
  ("clip"), or `optimizer.step()` on them without the scaler ("step").

Whatever is not replayed as the run had it is said in the trial's `replay` sentence.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .runner import SCALER_SETTINGS as _SCALER_SETTINGS
from .runner import Setup, base_lr, new_scaler


def complete(setup: Setup | None, timeline: Any, scaler: Any) -> None:
    """Fill in what the replay needs from the run, at close: the recorded lr per step of each
    replayed group, the schedulers that drove the optimizer, the GradScaler's settings."""
    if setup is None:
        return
    setup.scaler = scaler_settings(scaler)
    if timeline is None or not setup.lr_keys:
        return
    rows = []
    for _, per_group in timeline.series("optim.lr"):
        if not isinstance(per_group, dict):
            continue
        row = [per_group.get(k) for k in setup.lr_keys]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in row):
            break  # a group missing (or a tensor lr not read back): the rest not trusted
        rows.append([float(v) for v in row])
    setup.lrs = rows or None
    opt = setup.lr_keys[0].partition("/")[0]
    setup.schedulers = [
        str(e.get("cls"))
        for e in timeline.events("lr_scheduler")
        if e.get("optimizer") == opt and e.get("cls")
    ]


def scaler_settings(scaler: Any) -> dict[str, Any] | None:
    """The settings a fresh GradScaler needs to behave as the user's, or None when none is
    enabled."""
    if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
        return None
    out: dict[str, Any] = {"device": str(getattr(scaler, "_device", "cuda"))}
    for name in _SCALER_SETTINGS:
        value = getattr(scaler, f"_{name}", None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


class StepDriver:
    """One arm's optimizer step as the run made it: the lr of the run's step, the backward
    through the GradScaler when the run had one, then clipping and the step in the arm's
    order (unscale_ first, or TD204's misuse as written)."""

    def __init__(self, setup: Setup, arm: Any, opt: torch.optim.Optimizer, clip: Any) -> None:
        self.setup, self.arm, self.opt, self.clip = setup, arm, opt, clip
        self.scaler = new_scaler(arm_scaler(setup, arm))
        # Each optimizer group's base lr (a group TD103's fix adds follows the first group).
        self.bases = [float(g["lr"]) if _number(g.get("lr")) else None for g in opt.param_groups]
        self.lrs = None if getattr(arm, "constant_lr", False) else setup.lrs
        self.passes = 0  # backward passes since the last step (micro-batches)
        self.after = after_run(setup) if self.lrs else None

    def set_lr(self, step: int) -> None:
        """The lr the run had at this step (0-based), times the arm's lr_scale."""
        if not self.lrs:
            return
        row = self.lrs[step] if step < len(self.lrs) else self.after or self.lrs[-1]
        scale = self.arm.lr_scale
        for i, group in enumerate(self.opt.param_groups):
            lr = row[i] if i < len(row) else row[0] * _ratio(self.bases, i)
            _set(group, lr * scale)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.passes += 1
        if (
            self.passes == 1
            and self.scaler is not None
            and getattr(self.arm, "scaled", None) == ("mixed")
        ):
            # TD204 as written: unscale_ after the first micro-batch; the next ones add scaled
            # gradients into the unscaled ones (scaler.step() does not unscale again).
            self.scaler.unscale_(self.opt)

    def step(self) -> None:
        scaler, scaled = self.scaler, getattr(self.arm, "scaled", None)
        self.passes = 0
        if scaler is None:
            self._clip()
            self.opt.step()
        elif scaled == "step":
            # optimizer.step() on the gradients still scaled; no update() (torch would raise:
            # no inf check was recorded), so the scale stays where it started.
            self._clip()
            self.opt.step()
        else:
            if scaled not in ("clip", "mixed"):
                scaler.unscale_(self.opt)
            self._clip()
            scaler.step(self.opt)
            scaler.update()

    def _clip(self) -> None:
        if self.clip is not None:
            self.clip()


def after_run(setup: Setup) -> list[float] | None:
    """The lr row replayed after the run's recorded steps when the run ended inside a warm-up
    (each group's lr rising to its last step, below its base lr): the base lrs; else None (the
    last row is held)."""
    lrs = setup.lrs
    if not lrs or len(lrs) < 2 or len(setup.groups) != len(lrs[0]):
        return None
    bases = [base_lr(settings) for _, settings in setup.groups]
    if any(b is None for b in bases):
        return None
    for g, base in enumerate(bases):
        col = [row[g] for row in lrs]
        if not (col[-1] > col[0] and col[-1] >= max(col) and col[-1] < base):  # type: ignore[operator]
            return None
    return [float(b) for b in bases]  # type: ignore[arg-type]


def arm_scaler(setup: Setup, arm: Any) -> dict[str, Any] | None:
    """The GradScaler settings an arm replays: the run's; for TD204's plan without the user's
    scaler in sight (td.watch without scaler=), the plan's own (the measured scale)."""
    own = getattr(arm, "scaler", None)
    return setup.scaler or (dict(own) if own else None)


def describe(setup: Setup, arm: Any, batch: Any) -> str:
    """What the replay reproduced of the run, and what it did not, in one sentence."""
    parts = [_lr_words(setup, arm)]
    if batch is not None and batch.autocast is not None:
        parts.append(f"forward under autocast {batch.autocast[0]} {batch.autocast[1]}")
    else:
        parts.append("forward in the model's own precision (no autocast seen)")
    settings = arm_scaler(setup, arm)
    if settings is not None:
        own = "" if setup.scaler is not None else " (the run's scaler unseen: its measured scale)"
        shown = ", ".join(f"{k} {settings[k]:g}" for k in _SCALER_SETTINGS if k in settings)
        parts.append(f"a fresh GradScaler({shown}){own}")
    return "; ".join(parts)


def _lr_words(setup: Setup, arm: Any) -> str:
    scheds = ", ".join(dict.fromkeys(setup.schedulers))
    if getattr(arm, "constant_lr", False) or not setup.lrs:
        base = base_lr(setup.groups[0][1]) if setup.groups else None
        lr = f"{base * arm.lr_scale:.3g}" if base is not None else "the groups' lr"
        why = "" if setup.lrs else " (the run's lr per step was not recorded)"
        tail = f"; the run's {scheds} not replayed" if scheds else ""
        return f"constant lr {lr}{why}{tail}"
    lrs = [row[0] for row in setup.lrs]
    if max(lrs) == min(lrs):
        return f"the run's lr {lrs[0] * arm.lr_scale:.3g} (constant in its {len(lrs)} steps)"
    by = f" ({scheds})" if scheds else ""
    scale = f" x{arm.lr_scale:g}" if arm.lr_scale != 1.0 else ""
    peak = f" -> {max(lrs):.3g}" if max(lrs) > max(lrs[0], lrs[-1]) else ""
    after = after_run(setup)
    tail = (
        f"the base lr {after[0] * arm.lr_scale:.3g} after step {len(lrs)} (the run ended "
        "inside its warm-up)"
        if after
        else f"the last held after step {len(lrs)}"
    )
    return (
        f"the lr of each of the run's {len(lrs)} steps{by}{scale}, "
        f"{lrs[0]:.3g}{peak} -> {lrs[-1]:.3g}; {tail}"
    )


def _number(v: Any) -> bool:
    return isinstance(v, int | float | torch.Tensor) and not isinstance(v, bool)


def _ratio(bases: list[float | None], i: int) -> float:
    first, own = bases[0], bases[i] if i < len(bases) else None
    return own / first if first and own else 1.0


def _set(group: dict[str, Any], lr: float) -> None:
    current = group.get("lr")
    if isinstance(current, torch.Tensor):
        current.fill_(lr)  # a tensor lr (capturable/fused optimizers) stays a tensor
    else:
        group["lr"] = lr

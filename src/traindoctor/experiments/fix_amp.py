"""TD204's fix trial: gradients clipped, or stepped, while still multiplied by the GradScaler
scale; the fix unscales first (`scaler.unscale_(optimizer)` before clipping, `scaler.step`
instead of `optimizer.step()`).

Both arms replay the run's GradScaler (a fresh one with the user's settings, fidelity.py): as
written, the captured clipping runs on the scaled gradients (`clip_grad_norm_(max_norm)` with
the norm 65536x the true one) or `optimizer.step()` applies them; with the fix, `unscale_`
comes first and `scaler.step()`/`update()` follow. Under gradient accumulation, `unscale_`
after the first micro-batch (the next ones add scaled gradients into unscaled ones) is
replayed on the run's k micro-batches a step, and the fix unscales after the last. A clip
that never bites (a max_norm above even the scaled norm) is the same with and without the
fix: the trial says so.
"""

from __future__ import annotations

import math

from ..findings import Finding
from .fixes import FIX_NAMES, MAX_MICRO, NotRun, Plan, _needs_optimizer, _scale_note, fix_for
from .runner import Setup

FIX_NAMES["TD204"] = "scaler.unscale_(optimizer) before the gradients are used"


@fix_for("TD204")
def _unscale_first(finding: Finding, setup: Setup) -> Plan | NotRun:
    ev = finding.evidence
    call = ev.get("call")
    if call in ("clip_grad_norm_", "clip_grad_value_"):
        fix = f"scaler.unscale_(optimizer) before {call}"
    elif call == "optimizer.step":
        fix = "scaler.step(optimizer) and scaler.update() instead of optimizer.step()"
    elif call == "backward":
        fix = "scaler.unscale_(optimizer) once, after the last micro-batch's backward"
    else:
        fix = FIX_NAMES["TD204"]
    why = _needs_optimizer(setup)
    if why:
        return NotRun(fix, why)
    if call == "optimizer.step" and ev.get("scaler_stage") == "UNSCALED":
        # Unscaled, only the skipping of non-finite steps differs: a trial on finite
        # batches shows nothing either way.
        return NotRun(fix, "after unscale_, only steps with inf/NaN gradients differ")
    if call not in ("clip_grad_norm_", "clip_grad_value_", "optimizer.step", "backward"):
        return NotRun(fix, f"a misuse at {call} is not replayed")
    if call.startswith("clip") and (setup.clip is None or setup.clip[0] != call):
        return NotRun(fix, f"the script's {call} was not seen on the model's params")
    scaler = None
    if setup.scaler is None:
        # td.watch() without scaler=: a default GradScaler at the scale the misuse measured.
        scale = ev.get("scale")
        if not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
            return NotRun(fix, "the GradScaler's scale was not measured")
        device = next((p.device.type for p in setup.model.parameters()), "cpu")
        scaler = (("device", device), ("init_scale", float(scale)))
    note = _scale_note(setup) if call == "optimizer.step" else None
    if call == "backward":
        return _mixed(fix, setup, scaler)
    return Plan(
        fix,
        {"scaled": "clip" if call != "optimizer.step" else "step", "scaler": scaler},
        {"scaled": None},
        note=note,
    )


def _mixed(fix: str, setup: Setup, scaler: tuple[tuple[str, object], ...] | None) -> Plan | NotRun:
    """unscale_ inside the accumulation window: as written, the run's k micro-batches a step
    (the captured batches in groups of k, each loss times the run's own factor: 1/k for
    `loss / k`) with unscale_ after the first; with the fix, after the last."""
    k = setup.micro_batches
    if k < 2:
        return NotRun(fix, "one forward a step was captured: no accumulation window to replay")
    if k > MAX_MICRO:
        return NotRun(fix, f"{k} micro-batches a step: over the {MAX_MICRO} a trial replays")
    factor = setup.loss_factor
    scale = next(
        (f for f in (1.0 / k, 1.0) if factor is not None and abs(factor - f) <= 1e-4 * f), None
    )
    if scale is None:
        return NotRun(fix, "each micro-batch's loss scale (1 or 1/k) was not measured")
    return Plan(
        fix,
        {"micro": k, "loss_scale": scale, "scaled": "mixed", "scaler": scaler},
        {"scaled": None},
        # Not a global scale (the first micro-batch weighs 1/scale of the others): no
        # scale-invariance note, even under Adam.
    )

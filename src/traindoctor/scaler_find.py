"""td.watch(model, optimizer) without scaler=: the run's GradScaler found as it is used.

Most scripts that call the one-line watch do not pass their scaler. While such a doctor is
attached, the GradScaler class's scale()/update() are observed (_patches.add_scaler_listener:
reference-counted, restored exactly at detach, the instances untouched), as zero-code mode does:

- every scaled loss is mapped back to the loss it scales (the loss probe records the loss, not
  the loss times 65536; the amp probe knows a backward ran on scaled gradients);
- the first enabled scaler seen scaling becomes the run's (the amp probe's scale, skipped steps
  and clip/step order: TD204, TD205; TD211 sees that a scaler is there);
- its update() closes a step it skipped, as for a scaler given to watch().

With several scalers, the one whose update() follows a step of the first watched optimizer
is the run's (a GAN with a scaler per player: the other player's update() is not a step
boundary). A scaler that another doctor was given explicitly is left to that doctor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _patches


class ScalerFinder:
    """Finds the run's GradScaler for a watch-mode doctor attached without one."""

    def __init__(
        self,
        context: Callable[[], Any],
        use: Callable[[Any], None],
        updated: Callable[[], None],
        guard: Any,
    ) -> None:
        self._context = context  # the doctor's AttachContext (None once detached)
        self._use = use  # adopt a scaler as the run's
        self._updated = updated  # the step boundary of the run's scaler
        self._guard = guard  # an error is recorded, and this finder disabled
        self._listening = False

    def start(self) -> None:
        if not self._listening:
            _patches.add_scaler_listener(self)
            self._listening = True

    def stop(self) -> None:
        if self._listening:
            _patches.remove_scaler_listener(self)
            self._listening = False

    def _live(self, scaler: Any) -> Any:
        ctx = self._context()
        if ctx is None or ctx.state.closed or _patches.scaler_watched(scaler):
            return None
        return ctx

    def scaled(self, scaler: Any) -> None:
        self._guard.call("scaler find", self._scaled, scaler)

    def updated(self, scaler: Any, stepped: frozenset[int]) -> None:
        self._guard.call("scaler find", self._on_update, scaler, stepped)

    def _scaled(self, scaler: Any) -> None:
        ctx = self._live(scaler)
        if ctx is not None and ctx.scaler is None and _enabled(scaler):
            self._use(scaler)

    def _on_update(self, scaler: Any, stepped: frozenset[int]) -> None:
        ctx = self._live(scaler)
        if ctx is None or not _enabled(scaler):
            return
        adopt, boundary = update_role(ctx, scaler, stepped)
        if adopt:
            self._use(scaler)
        if boundary:
            self._updated()


def update_role(ctx: Any, scaler: Any, stepped: frozenset[int]) -> tuple[bool, bool]:
    """What a GradScaler's update() is to the run attached as `ctx`, given the ids of the
    optimizers it stepped since its last update: (adopt it as the run's scaler, it closes a
    step). The scaler of the first watched optimizer is the run's; another optimizer's
    scaler's update() (a GAN with a scaler per player) is not this run's step boundary."""
    primary = ctx.optimizers[0] if ctx.optimizers else None
    if primary is not None and id(primary) in stepped:
        return ctx.scaler is not scaler, True
    if stepped or scaler is not ctx.scaler:
        return False, False
    return False, True


def _enabled(scaler: Any) -> bool:
    try:
        return bool(scaler.is_enabled())
    except Exception:  # noqa: BLE001  (not a GradScaler after all)
        return False

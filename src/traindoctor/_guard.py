"""Failure isolation: nothing that goes wrong inside traindoctor may reach the user's loop."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import StopTraining

T = TypeVar("T")


@dataclass
class InternalError:
    where: str  # "probe grads", "rule TD108", "hook optimizer_step"
    error: str  # "ZeroDivisionError: division by zero"
    step: int | None
    traceback: str = field(repr=False, default="")

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "error": self.error, "step": self.step}


class Guard:
    """Runs callables, turning exceptions into recorded internal errors.

    A component that fails is disabled after its first error, so a broken probe costs one
    recorded error, not one per step.
    """

    def __init__(self, step_fn: Callable[[], int | None] = lambda: None) -> None:
        self.errors: list[InternalError] = []
        self.disabled: set[str] = set()
        # Components switched off for a while, not for failing (StepDriver: a long stretch of
        # backward passes without a step): in `disabled` meanwhile, so every check skips them.
        self.paused: set[str] = set()
        self._step_fn = step_fn

    def pause(self, keys: frozenset[str]) -> None:
        """Skip these components (their hooks and handlers) until resume()."""
        new = keys - self.disabled
        self.paused |= new
        self.disabled |= new

    def resume(self) -> None:
        if self.paused:
            self.disabled -= self.paused
            self.paused.clear()

    def call(self, where: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        if where in self.disabled:
            return None
        try:
            return fn(*args, **kwargs)
        except StopTraining:
            raise
        except Exception as exc:  # noqa: BLE001  (isolation is the point)
            self.record(where, exc)
            return None

    def note(self, where: str, exc: BaseException) -> None:
        """Record an error without disabling the component (it recovered by itself)."""
        self.record(where, exc)
        self.disabled.discard(where)

    def record(self, where: str, exc: BaseException) -> None:
        try:
            step = self._step_fn()
        except Exception:  # noqa: BLE001
            step = None
        self.errors.append(
            InternalError(
                where=where,
                error=f"{type(exc).__name__}: {exc}",
                step=step,
                traceback="".join(traceback.format_exception(exc)),
            )
        )
        self.disabled.add(where)
        self.paused.discard(where)  # failed: it stays off

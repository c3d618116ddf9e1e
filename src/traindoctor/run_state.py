"""Where the run is: the step clock and the run's mode, read by probes and integrations.

`RunState` is the read-only view everyone gets (`ctx.state`, `doctor.state`); only the Doctor
holds the `RunClock` that writes it. Reading a property costs a few tens of nanoseconds, so
hooks on the hot path may read it on every call (the hottest are C getters: no Python frame).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any


def _never() -> bool:
    return False


class RunState:
    """The open step, whether it is sampled, and whether the run validates or has closed."""

    __slots__ = (
        "_step",
        "_sampled",
        "_structural_steps",
        "_validating",
        "_in_validation",
        "_validations",
        "_closed",
        "_attached",
        "_switching_modes",
        "_model_output",
        "_hand_steps_expected",
    )

    def __init__(self, structural_steps: int = 3) -> None:
        self._step = 1  # the open step: optimizer steps completed so far + 1
        self._sampled = True
        self._structural_steps = structural_steps
        self._validating = 0  # nesting depth of validations in progress
        self._in_validation = False  # _validating > 0, kept as a flag: read on every hook call
        self._validations = 0  # validations begun so far
        self._closed = False
        self._attached = False
        self._switching_modes = False
        self._model_output: dict[str, Any] | None = None
        self._hand_steps_expected: Callable[[], bool] = _never

    step = property(attrgetter("_step"), doc="The open step: optimizer steps completed so far + 1.")

    sampled = property(
        attrgetter("_sampled"),
        doc="Whether the open step is sampled (per-step probes measure it in full).",
    )

    @property
    def structural_steps(self) -> int:
        """How many first steps are structural (always sampled, structure checked)."""
        return self._structural_steps

    @property
    def structural(self) -> bool:
        """Whether the open step is one of the first steps, where structure is checked."""
        return self._step <= self._structural_steps

    validating = property(
        attrgetter("_in_validation"),
        doc="Inside `doc.validating()` or a framework's evaluation loop.",
    )

    @property
    def validations(self) -> int:
        """How many validations have begun."""
        return self._validations

    closed = property(
        attrgetter("_closed"), doc="The doctor closed: hooks still called by torch must do nothing."
    )

    @property
    def attached(self) -> bool:
        """Models and optimizers are watched (zero-code mode attaches at the first backward)."""
        return self._attached

    @property
    def switching_modes(self) -> bool:
        """traindoctor itself is calling eval()/train() (validating()): not the user's call."""
        return self._switching_modes

    @property
    def model_output(self) -> dict[str, Any] | None:
        """Facts about the watched model's last training output (shape, dtype, requires_grad)."""
        return self._model_output

    @property
    def hand_steps_expected(self) -> bool:
        """Weights are updated by hand (no torch optimizer steps them), see handsteps.py."""
        return self._hand_steps_expected()


class RunClock(RunState):
    """The writer of a RunState: held by the Doctor alone."""

    __slots__ = ()

    def advance(self) -> None:
        """The open step closed: the next one opens (its sampling is set by set_sampled)."""
        self._step += 1

    def set_sampled(self, sampled: bool) -> None:
        self._sampled = sampled

    def begin_validation(self) -> int:
        self._validations += 1
        self._validating += 1
        self._in_validation = True
        return self._validations

    def end_validation(self) -> None:
        self._validating = max(0, self._validating - 1)
        self._in_validation = self._validating > 0

    def mark_attached(self) -> None:
        self._attached = True

    def mark_closed(self) -> None:
        self._closed = True

    def set_switching_modes(self, switching: bool) -> None:
        self._switching_modes = switching

    def set_model_output(self, facts: dict[str, Any] | None) -> None:
        self._model_output = facts

    def expect_hand_steps_from(self, fn: Callable[[], bool]) -> None:
        self._hand_steps_expected = fn

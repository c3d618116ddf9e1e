"""The event bus: the Doctor publishes what happens in the run; probes and integrations listen.

Events flow one way: torch's hooks → the Doctor → the bus → probes (which record into the
timeline) → rules (which read only the timeline). Each event is declared below with the
arguments its handlers receive; a probe subscribes by overriding the `Probe` method of the
same name (`Event.BACKWARD` → `Probe.on_backward`), anything else with `Bus.subscribe`.

Every handler runs behind the guard: one that raises is recorded, switched off and (a probe)
detached; the others still run, and nothing reaches the user's loop.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ._guard import Guard
from ._mode_stack import UsersOff
from .errors import StopTraining
from .run_state import RunState

F = TypeVar("F", bound=Callable[..., Any])


class Subscriber(Protocol):
    """What the bus needs of a probe: a guard name, the handler methods, and two flags."""

    name: str
    retired: bool
    sampled_only: frozenset[str]

    def detach(self) -> None: ...


def default_handler(fn: F) -> F:
    """Marks a base-class handler that does nothing: the bus does not call it."""
    fn.__traindoctor_default__ = True  # type: ignore[attr-defined]
    return fn


class Event(enum.Enum):
    """Each member's value is the name of the `Probe` method that handles it."""

    #: (step, sampled, rec): a step opens; per-step hooks of a sampled step go in here.
    STEP_OPENED = "prepare"
    #: (step, root, loss, rec): backward() is about to run on `root` (`loss`: unscaled).
    BACKWARD = "on_backward"
    #: (step, rec): a backward pass has accumulated its gradients.
    AFTER_BACKWARD = "on_after_backward"
    #: (step, sampled, optimizer, rec): before any watched optimizer's step().
    OPTIMIZER_PRE_STEP = "on_optimizer_pre_step"
    #: (step, sampled, optimizer, rec): after any watched optimizer's step().
    OPTIMIZER_POST_STEP = "on_optimizer_post_step"
    #: (step, sampled, rec): before the primary optimizer's step() applies the gradients.
    PRE_STEP = "on_pre_step"
    #: (step, sampled, rec): after the primary optimizer's step().
    POST_STEP = "on_post_step"
    #: (step, sampled, names, source, rec): weights updated by hand (no optimizer stepped).
    HAND_STEP = "on_hand_step"
    #: (step, rec): a backward pass re-evaluating the closure of the running step(closure)
    #: (L-BFGS's line search) is about to run; it is no backward of the probes (steps.py):
    #: what they opened for the loss code since the forward closes here.
    EVALUATION = "on_evaluation"
    #: (step, sampled, rec): the step closed (also when a GradScaler skipped it).
    STEP_CLOSED = "on_step_end"
    #: (step, model, rec): a validation begins (model None: the watched models).
    VALIDATION_BEGIN = "on_validation"
    #: (step, rec): the validation ended.
    VALIDATION_END = "on_validation_end"
    #: (step, loss, parts, metrics, validating, rec): `doc.log(...)` was called.
    LOG = "on_log"
    #: (facts,): the watched model returned its training output (RunState.model_output).
    MODEL_OUTPUT = "on_model_output"
    #: (findings,): a diagnosis pass ranked these findings.
    DIAGNOSIS_MADE = "on_diagnosis"
    #: (report,): close() wrote the run directory (report.run_dir holds its files).
    REPORT_WRITTEN = "on_report_written"


Handler = tuple[str, Any, Callable[..., Any]]  # (guard key, probe or None, callable)


class Bus:
    """Delivers events to probes and listeners, each behind the guard.

    It runs about ten times a step, so delivery is lean: the handler list of an (event,
    sampled) pair is built once, probes that keep the base class's no-op are left out, and
    on an unsampled step so are the handlers a probe declares in `sampled_only`.
    """

    def __init__(self, guard: Guard, state: RunState) -> None:
        self._guard = guard
        self._state = state
        self._probes: list[Subscriber] = []
        self._listeners: list[tuple[Event, str, Callable[..., Any]]] = []
        # Handler lists by sampled flag, then by the event's value (an Enum member hashes in
        # Python, and a str's hash is cached: a subscript on `event._value_` makes no call).
        self._cache: tuple[dict[str, list[Handler]], dict[str, list[Handler]]] = ({}, {})

    def add_probes(self, probes: list[Subscriber]) -> None:
        self._probes.extend(probes)
        self._clear()

    def subscribe(self, event: Event, fn: Callable[..., Any], where: str) -> Callable[[], None]:
        """Call `fn` with the event's arguments after the probes; returns an unsubscribe."""
        entry = (event, where, fn)
        self._listeners.append(entry)
        self._clear()

        def unsubscribe() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)
                self._clear()

        return unsubscribe

    def refresh(self) -> None:
        """Rebuild the handler lists: a probe changed its `sampled_only` (or retired)."""
        self._clear()

    def _clear(self) -> None:
        for cache in self._cache:
            cache.clear()

    def emit(self, event: Event, *args: Any) -> None:
        sampled = self._state._sampled
        try:
            handlers = self._cache[sampled][event._value_]
        except KeyError:
            handlers = self._handlers((event, sampled))
        if not handlers:
            return  # nobody listens on this kind of step: no guard, no loop
        guard = self._guard
        disabled = guard.disabled
        retired = False
        with UsersOff():  # the user's tensor subclasses and modes do not see the handlers
            for where, probe, method in handlers:
                if disabled and where in disabled:
                    continue
                try:
                    method(*args)
                except StopTraining:
                    raise
                except Exception as exc:  # noqa: BLE001  (isolation is the point)
                    guard.record(where, exc)
                    if probe is not None:
                        # It failed just now: take its hooks off the model, they only cost time.
                        guard.call(f"{where} detach", probe.detach)
                if probe is not None:
                    retired = retired or probe.retired
        if retired:
            self._clear()  # rebuilt without the probes whose work is over

    def _handlers(self, key: tuple[Event, bool]) -> list[Handler]:
        event, sampled = key
        name = event.value
        handlers: list[Handler] = [
            (f"probe {p.name}", p, getattr(p, name))
            for p in self._probes
            if _overrides(p, name) and not p.retired and (sampled or name not in p.sampled_only)
        ]
        handlers.extend((where, None, fn) for e, where, fn in self._listeners if e is event)
        self._cache[sampled][event._value_] = handlers
        return handlers


def _overrides(probe: Subscriber, name: str) -> bool:
    """Whether the probe handles the event (its method is not the base class's no-op)."""
    method = getattr(type(probe), name, None)
    return method is not None and not getattr(method, "__traindoctor_default__", False)

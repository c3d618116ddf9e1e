"""torch.compile: which watched models run compiled, so that traindoctor leaves their hooks be.

Dynamo inlines a module's hooks into the graph it compiles and guards on how many there are.
Our hooks return at once while traced (`CopySafeHook`), so they compile to nothing and break no
graph; but a hook added or removed between steps fails a guard, and the model is recompiled
(an 8-layer MLP hit dynamo's recompile limit in 8 steps). A model that runs compiled therefore
gets no per-step hooks: the probes that install hooks for a sampled or structural step skip it
(`AttachContext.eager_models`), and the hooks of the step where it was found compiled go once,
at the next step (one recompile, in the first steps). What those hooks measure (activations,
per-layer finiteness, the first layer's input) is then not measured inside that model; the
timeline's `compiled_models` fact says so.

A model runs compiled when it is, or holds, a dynamo `OptimizedModule`, or, found at a step's
end, a backward reached its parameters while dynamo
had compiled graphs and none of our eager hooks on it ran (`torch.compile(model)` kept under
another name, `module.compile()`, or a compiled function that calls the model).
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch

from ._hooks import CopySafeHook


def _optimized_module_type() -> type | None:
    if "torch._dynamo" not in sys.modules:
        return None  # nothing was ever compiled in this process
    from torch._dynamo.eval_frame import OptimizedModule

    return OptimizedModule


def compiled_statically(model: torch.nn.Module) -> bool:
    """The model is, or holds, torch.compile's wrapper. (`module.compile()` is left to the
    runtime check: with torch 2.13 it can leave the module running eagerly.)"""
    optimized = _optimized_module_type()
    return optimized is not None and any(isinstance(m, optimized) for m in model.modules())


def _dynamo_graphs() -> int:
    """Graphs dynamo compiled in this process so far (a process-wide counter)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


class CompileWatch:
    """Finds the watched models that run compiled (see the module docstring)."""

    def __init__(self) -> None:
        self.compiled: set[str] = set()  # prefixes of the watched models that run compiled
        self._eager: dict[str, int] = {}  # prefix -> eager calls of our watch hooks this step
        # prefix -> weakref: a model the script drops (a zero-code sweep's trial) is freed
        self._models: dict[str, weakref.ref[torch.nn.Module]] = {}
        self._handles: list[Any] = []
        # Graphs compiled before this attach: an earlier run in the process (a notebook, a
        # test session) that compiled a model must not make this run's idle models compiled.
        # A model compiled before attach recompiles once our hooks are on (dynamo guards on
        # module hooks), so its graphs still count after.
        self._graphs_before = _dynamo_graphs()

    def unwrap(self, prefix: str, model: torch.nn.Module) -> torch.nn.Module:
        """The module a torch.compile wrapper wraps (noted as compiled), else the model."""
        optimized = _optimized_module_type()
        if optimized is not None and isinstance(model, optimized):
            self.compiled.add(prefix)
            return model._orig_mod
        return model

    def attach(self, models: dict[str, torch.nn.Module]) -> None:
        self._models = {p: weakref.ref(m) for p, m in models.items()}
        for prefix, model in models.items():
            if prefix in self.compiled or compiled_statically(model):
                self.compiled.add(prefix)
                continue
            self._eager[prefix] = 0
            # The root, and the first module that holds a trainable parameter of its own: a
            # script that calls model.forward(x) directly skips the root's hooks, not the
            # layers'. Persistent: added once here, never per step.
            watched = [model]
            for m in model.modules():
                if m is not model and any(p.requires_grad for p in m.parameters(recurse=False)):
                    watched.append(m)
                    break
            for m in watched:
                self._handles.append(
                    m.register_forward_pre_hook(CopySafeHook(self._counter(prefix)))
                )

    def _counter(self, prefix: str):
        eager = self._eager

        def count(_module: torch.nn.Module, _args: Any) -> None:
            eager[prefix] = eager.get(prefix, 0) + 1

        return count

    def step_end(self, backward_ran: bool) -> set[str]:
        """Models newly found compiled in the step that ends (none while dynamo compiled none)."""
        found: set[str] = set()
        idle = [p for p, calls in self._eager.items() if calls == 0]
        if backward_ran and idle and _dynamo_graphs() > self._graphs_before:
            found = {p for p in idle if _has_grad(self._models[p]())}
        for prefix in found:
            self.compiled.add(prefix)
            del self._eager[prefix]
        for prefix in self._eager:
            self._eager[prefix] = 0
        return found

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _has_grad(model: torch.nn.Module | None) -> bool:
    if model is None:
        return False  # dropped by the script
    # The first trainable parameter only: asked every step of a model that was not called
    # (an EMA copy evaluated now and then), it must not walk all of its parameters.
    first = next((p for p in model.parameters() if p.requires_grad), None)
    return first is not None and first.grad is not None

"""Forward calls: which modules ran, with grad enabled or not, and whether outputs carry a graph.

Hooks every submodule for the structural steps only (the first few), then removes them.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, ClassVar

import torch

from .._graph import below_views
from .._source import user_source
from ..bus import Event
from ..timeline import signal
from ._module_hooks import ForwardHooks
from .base import AttachContext, Probe, Recorder, iter_tensors

FORWARD_CALLS = signal(
    "forward.calls",
    "per module: {calls, grad_enabled, output_requires_grad, source} on structural steps",
)


def output_facts(output: Any) -> dict[str, Any]:
    """Whether a module output (tensor, tuple, dict, dataclass-like) carries an autograd graph."""
    if isinstance(output, torch.Tensor):
        # The usual output, without the generator walk (per module call on structural steps:
        # 10,000 modules on some models). The same facts as the walk below gives.
        if not (output.is_floating_point() or output.is_complex()):
            return {"tensors": 1, "requires_grad": False, "grad_fn": None}
        grad_fn = output.grad_fn
        return {
            "tensors": 1,
            "requires_grad": output.requires_grad,
            "grad_fn": type(grad_fn).__name__ if grad_fn is not None else None,
        }
    tensors = list(iter_tensors(output, max_depth=3, max_items=16))
    floats = [t for t in tensors if t.is_floating_point() or t.is_complex()]
    grad_fns = sorted({type(t.grad_fn).__name__ for t in floats if t.grad_fn is not None})
    return {
        "tensors": len(tensors),
        "requires_grad": any(t.requires_grad for t in floats),
        "grad_fn": grad_fns[0] if grad_fns else None,
    }


class ForwardProbe(Probe):
    name = "forward"
    provides: ClassVar[tuple[str, ...]] = (FORWARD_CALLS,)
    provides_facts: ClassVar[tuple[str, ...]] = ("bias_before_norm", "modules_unrun_referenced")

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[str, dict[str, Any]] = {}
        self._step = 1
        # id(grad_fn) -> (grad_fn, module) for outputs of modules with a trainable bias, kept
        # for the step (holding the node keeps its id from being reused): a batch/instance
        # norm whose input is that very output cancels the bias (TD104).
        self._biased: dict[int, tuple[Any, str]] = {}
        # qual -> the user line of its first call: found once (a stack walk per module per
        # structural step otherwise); the rules read a module's facts from its first step.
        self._sources: dict[str, str | None] = {}
        self._ran: set[str] = set()  # modules called on any structural step

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        # One hook object shared by every module, with the module's facts looked up by id:
        # a closure per module was ~6 objects for Python's cyclic collector to walk at every
        # full collection (10,000 modules on some models), through the whole run.
        shared = ctx.hook("probe forward", self._on_forward)
        self._modules: dict[int, tuple[str, bool, bool]] = {}
        norms = [
            (prefix, name, module)
            for prefix, model in ctx.eager_models().items()
            for name, module in model.named_modules()
            if name and _centers_channels(module)
        ]
        hooks = ForwardHooks()  # no handle kept per module (_module_hooks.py)
        for prefix, model in ctx.eager_models().items():
            for name, module in model.named_modules():
                qual = f"{prefix}{name}" if name else (prefix.rstrip(".") or "<model>")
                # A biased module's output is noted only where a norm could cancel its bias
                # (TD104): without one, nothing reads it, and holding each output's node for
                # the step kept ~2 objects per module alive (promoted toward full collections).
                biased = bool(norms) and bool(name) and _has_trainable_bias(module)
                facts = (qual, not name, biased)
                if self._modules.setdefault(id(module), facts) is facts:
                    hook = shared
                else:  # the same module object under a second model: its own facts
                    hook = ctx.hook("probe forward", self._make_hook(*facts))
                hooks.add(module, hook)
        if len(hooks):
            self.handles.append(hooks)
        for prefix, name, module in norms:
            self.handles.append(
                module.register_forward_hook(
                    ctx.hook("probe forward", self._make_norm_hook(f"{prefix}{name}"))
                )
            )
        biased = [
            (f"{prefix}{n}", m)
            for prefix, model in ctx.models.items()
            for n, m in model.named_modules()
            if n and _has_trainable_bias(m)
        ]
        self._names = {id(m): qual for qual, m in biased}
        # id(bias) -> its name, for a bias added by hand right before a norm (_added_bias).
        self._biases = (
            {id(m._parameters["bias"]): f"{qual}.bias" for qual, m in biased} if norms else {}
        )
        rec.timeline.facts.setdefault("bias_before_norm", {})

    def _note_biased(self, module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        grad_fn = getattr(output, "grad_fn", None) if isinstance(output, torch.Tensor) else None
        name = self._names.get(id(module))
        if grad_fn is not None and name is not None:
            self._biased[id(grad_fn)] = (grad_fn, name)

    def _make_norm_hook(self, qual: str):
        def hook(module: torch.nn.Module, inputs: Any, _output: Any) -> None:
            x = inputs[0] if isinstance(inputs, tuple) and inputs else None
            grad_fn = getattr(x, "grad_fn", None) if isinstance(x, torch.Tensor) else None
            if grad_fn is None or not _uses_batch_stats(module):
                return
            hit = self._biased.get(id(grad_fn))
            name = f"{hit[1]}.bias" if hit is not None and hit[0] is grad_fn else None
            if name is None:
                # `conv_out + self.bias.view(1, -1, 1, 1)` then the norm, inside one module's
                # forward (QAT's fused ConvBn: the conv runs with a zero bias, adds its own).
                name = _added_bias(grad_fn, self._biases, getattr(module, "num_features", 0))
            if name is not None:
                assert self.ctx is not None
                facts = self.ctx.rec.timeline.facts.setdefault("bias_before_norm", {})
                facts.setdefault(name, qual)

        return hook

    def _on_forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        facts = self._modules.get(id(module))
        if facts is not None:
            self._called(facts[0], facts[1], facts[2], module, inputs, output)

    def _make_hook(self, qual: str, is_root: bool, biased: bool = False):
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            self._called(qual, is_root, biased, module, inputs, output)

        return hook

    def _called(
        self,
        qual: str,
        is_root: bool,
        biased: bool,
        module: torch.nn.Module,
        inputs: Any,
        output: Any,
    ) -> None:
        entry = self._calls.get(qual)
        if entry is None:
            if type(output) is torch.Tensor and not is_root:
                # output_facts' two facts without its dict (per module per structural step).
                if output.is_floating_point() or output.is_complex():
                    requires_grad, grad_fn = output.requires_grad, output.grad_fn
                    grad_fn = type(grad_fn).__name__ if grad_fn is not None else None
                else:
                    requires_grad, grad_fn = False, None
                facts = None
            else:
                facts = output_facts(output)
                requires_grad, grad_fn = facts["requires_grad"], facts["grad_fn"]
            source = self._sources.get(qual, _UNKNOWN)
            if source is _UNKNOWN:
                source = self._sources[qual] = user_source(skip=2)
            self._calls[qual] = {
                "calls": 1,
                "grad_enabled": torch.is_grad_enabled(),
                "output_requires_grad": requires_grad,
                "output_grad_fn": grad_fn,
                "source": source,
            }
            if facts is not None and is_root:
                assert self.ctx is not None
                self.ctx.bus.emit(Event.MODEL_OUTPUT, facts)
        else:
            entry["calls"] += 1
            if torch.is_grad_enabled():
                entry["grad_enabled"] = True
                if not entry["output_requires_grad"]:
                    entry["output_requires_grad"] = output_facts(output)["requires_grad"]
        if biased:
            self._note_biased(module, inputs, output)

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._step = step
        self._biased.clear()

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        self.flush(step, rec)
        assert self.ctx is not None
        if step >= self.ctx.budget.structural_steps:
            rec.timeline.facts["modules_unrun_referenced"] = _unrun_referenced(
                self.ctx.eager_models(), self._ran
            )
            self.detach()
            self.retired = True
            self._biased.clear()
            self._sources.clear()

    def flush(self, step: int, rec: Recorder) -> None:
        if self._calls:
            self._ran.update(self._calls)
            rec.record(step, FORWARD_CALLS, self._calls)
            self._calls = {}
        elif self.handles:
            rec.record(step, FORWARD_CALLS, {})


MAX_UNRUN = 200
_UNKNOWN = object()  # a module whose source line is not looked up yet


def _unrun_referenced(models: dict[str, torch.nn.Module], ran: set[str]) -> list[str]:
    """Modules that never ran whose attribute name appears in the forward of the nearest
    module holding them that has a forward of its own (`self.layer2` under an `if` a config
    switches off), as opposed to a layer defined and never used (TD102 says the first at info).
    A member of a ModuleList/ModuleDict whose other members ran is never one (an index bug).
    Read once, when the structural steps end; a forward whose source cannot be read counts as
    not mentioning it."""
    out: list[str] = []
    sources: dict[type, str] = {}
    for prefix, model in models.items():
        chain: dict[str, torch.nn.Module] = {}
        for name, module in model.named_modules():
            chain[name] = module
            qual = f"{prefix}{name}" if name else (prefix.rstrip(".") or "<model>")
            if not name or qual in ran or len(out) >= MAX_UNRUN:
                continue
            parts = name.split(".")
            parent = chain.get(".".join(parts[:-1]))
            if isinstance(parent, torch.nn.ModuleList | torch.nn.ModuleDict):
                # A member of a list whose other members ran: an index or slice that misses
                # it (`range(len(self.blocks) - 1)`), not a branch switched off.
                base = f"{prefix}{'.'.join(parts[:-1])}."
                if any(f"{base}{key}" in ran for key in parent._modules):
                    continue
            for depth in range(len(parts) - 1, -1, -1):
                holder = chain.get(".".join(parts[:depth]))
                forward = type(holder).forward if holder is not None else None
                if forward is None or forward is torch.nn.Module.forward:
                    continue  # a ModuleList/ModuleDict: look further up
                if isinstance(holder, torch.nn.Sequential):
                    break  # runs every child: a child that never ran was not switched off
                src = sources.get(type(holder))
                if src is None:
                    try:
                        src = sources[type(holder)] = inspect.getsource(forward)
                    except (OSError, TypeError):
                        src = sources[type(holder)] = ""
                if re.search(rf"\.{re.escape(parts[depth])}\b", src):
                    out.append(qual)
                break
    return out


def _added_bias(grad_fn: Any, biases: dict[int, str], channels: int) -> str | None:
    """The name of a watched bias of `channels` values that the node adds to its other
    operand (directly or through views of it: `x + self.bias.view(1, -1, 1, 1)`)."""
    if type(grad_fn).__name__ != "AddBackward0" or not channels:
        return None
    for operand, _ in grad_fn.next_functions:
        variable = getattr(below_views(operand, 3), "variable", None)  # a view or two of it
        name = biases.get(id(variable)) if variable is not None else None
        if name is not None and variable.numel() == channels:
            return name
    return None


def _has_trainable_bias(module: torch.nn.Module) -> bool:
    bias = module._parameters.get("bias")
    return bias is not None and bias.requires_grad and bias.dim() == 1


def _centers_channels(module: torch.nn.Module) -> bool:
    """Norms that subtract a per-channel mean over the batch (BatchNorm) or the positions
    (InstanceNorm): a per-channel bias added right before them cancels. GroupNorm and
    LayerNorm subtract a mean over several channels: a per-channel bias survives them."""
    return isinstance(
        module, torch.nn.modules.batchnorm._BatchNorm | torch.nn.modules.instancenorm._InstanceNorm
    )


def _uses_batch_stats(module: torch.nn.Module) -> bool:
    # In eval mode with running statistics the mean is a constant: the bias does not cancel.
    return module.training or getattr(module, "running_mean", None) is None

"""Counted work of one training step: what the sampling schedule is decided from.

The schedule of sampled steps (budget.py) must be the same in two runs of the same script,
however loaded the machine: it is decided from work counted here, never from timing. On the
first training step, a hook on every module counts the modules that ran, the elements of their
outputs, and estimates the forward's floating-point operations from each module's own weights
(2 x weight elements x output positions for a matmul/convolution, the output's elements for the
rest); then the hooks go. A model that runs compiled (compiled.py) is not hooked: its forward
is estimated from its parameters alone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..timeline import signal
from ._module_hooks import ForwardHooks
from .base import AttachContext, Probe, Recorder, iter_tensors

WORK_COUNTED = signal(
    "work.counted",
    "first training step: {modules, tensors, elements, activations, flops, device}",
)

# A forward whose activations were not seen (compiled): this many output positions per weight.
NOMINAL_POSITIONS = 32


def _weight_flops(module: torch.nn.Module, out_elements: int) -> float:
    """2 x multiply-adds of a module's own weights over its output positions, or the output's
    elements for a module without a matrix weight (activations, norms, pooling)."""
    if isinstance(module, torch.nn.Embedding | torch.nn.EmbeddingBag):
        return float(out_elements)  # a lookup
    flops = 0.0
    for p in _own_params(module):
        if p.dim() >= 2 and p.shape[0]:
            flops += 2.0 * p.numel() * (out_elements / p.shape[0])
    return flops or float(out_elements)


_plain_types: dict[type, bool] = {}


def _own_params(module: torch.nn.Module) -> Any:
    """`module.parameters(recurse=False)`, read from its `_parameters` dict where its class
    keeps torch's own listing (a generator chain per call otherwise: ~5 µs a module)."""
    cls = type(module)
    plain = _plain_types.get(cls)
    if plain is None:
        plain = _plain_types[cls] = (
            cls.parameters is torch.nn.Module.parameters
            and cls.named_parameters is torch.nn.Module.named_parameters
            and cls._named_members is torch.nn.Module._named_members
            and cls.named_modules is torch.nn.Module.named_modules
        )
    if not plain:
        return module.parameters(recurse=False)
    own = module._parameters
    if len(own) == 1:
        return [p for p in own.values() if p is not None]
    # None entries skipped, a tensor registered twice listed once (as torch's memo does).
    return {id(p): p for p in own.values() if p is not None}.values()


class WorkProbe(Probe):
    name = "work"
    provides: ClassVar[tuple[str, ...]] = (WORK_COUNTED,)

    def __init__(self) -> None:
        super().__init__()
        self._modules = 0
        self._activations = 0
        self._flops = 0.0
        self._device = "cpu"

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        hook = ctx.hook("probe work", self._count)  # one object for every module
        hooks = ForwardHooks()  # no handle kept per module (_module_hooks.py)
        for model in ctx.eager_models().values():
            for module in model.modules():
                hooks.add(module, hook)
        if len(hooks):
            self.handles.append(hooks)

    def _count(self, module: torch.nn.Module, _args: Any, output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        assert self.ctx is not None
        if self.ctx.state.validating:
            return
        if isinstance(output, torch.Tensor):  # the usual output, without the generator
            elements = output.numel()
            self._device = output.device.type
        else:
            elements = 0
            for t in iter_tensors(output, max_depth=2, max_items=8):
                elements += t.numel()
                self._device = t.device.type
        self._modules += 1
        self._activations += elements
        self._flops += _weight_flops(module, elements)

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        ctx = self.ctx
        assert ctx is not None
        if not self._modules and ctx.eager_models():
            return  # no training forward yet: count the next step
        params = [p for _, p in ctx.named_params() if p.requires_grad]
        elements = sum(p.numel() for p in params)
        flops = self._flops
        if len(ctx.eager_models()) < len(ctx.models):
            compiled = [ctx.models[p] for p in ctx.compiled if p in ctx.models]
            weights = sum(p.numel() for m in compiled for p in m.parameters() if p.requires_grad)
            flops += 2.0 * weights * NOMINAL_POSITIONS
            if params:
                self._device = params[0].device.type
        rec.record(
            step,
            WORK_COUNTED,
            {
                "modules": self._modules,
                "tensors": len(params),
                "elements": elements,
                "activations": self._activations,
                "flops": flops,
                "device": self._device,
            },
        )
        self.detach()
        self.retired = True

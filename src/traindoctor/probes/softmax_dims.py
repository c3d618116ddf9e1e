"""Softmax modules whose `dim` changes meaning with the input's rank (TD519).

`nn.Softmax(dim=0)` written for one unbatched vector normalizes its features; given a batch
(the same model, called on a (B, C) batch to compute the loss) it normalizes over the batch.
A forward pre-hook on each watched model keeps the rank and leading size of the model's
input; a forward hook on each `nn.Softmax`/`nn.LogSoftmax`/`nn.Softmin` built with `dim=0`
records, once per input rank, a `softmax_call` event: the module, its dim, the input's shape,
the model input's rank and leading size, and whether grad was enabled. Host metadata only;
a call whose rank was seen costs one set lookup.

Also (TD523) each `nn.LSTM`/`nn.GRU`/`nn.RNN` and `nn.MultiheadAttention` built without
`batch_first=True` (sequence first: (time, batch, features)): a forward hook records, once per
input shape (at most `MAX_SEQ_SHAPES` per module), a `seq_layer_call` event with the module,
its class, its first input's shape and the watched model's input rank and leading size (the
same pre-hook as the softmax's), on trained calls (grad enabled, module in training).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import AttachContext, Probe, Recorder

_KINDS = (torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.Softmin)
_SEQ_KINDS = (torch.nn.RNNBase, torch.nn.MultiheadAttention)
MAX_SEQ_SHAPES = 4  # distinct input shapes recorded per sequence-first module


def _first_tensor(args: tuple) -> torch.Tensor | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


class SoftmaxDimsProbe(Probe):
    name = "softmax_dims"
    provides: ClassVar[tuple[str, ...]] = ()
    provides_events: ClassVar[tuple[str, ...]] = ("softmax_call", "seq_layer_call")

    def __init__(self) -> None:
        super().__init__()
        self._model_input: tuple[int, int] | None = None  # (rank, leading size)
        self._seen: dict[str, set[int]] = {}

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec
        found = False
        for prefix, model in ctx.eager_models().items():
            for name, module in model.named_modules():
                if isinstance(module, _SEQ_KINDS) and not getattr(module, "batch_first", True):
                    qual = f"{prefix}{name}" if name else (prefix.rstrip(".") or "<model>")
                    self.handles.append(
                        module.register_forward_hook(
                            ctx.hook("probe softmax_dims", self._seq_hook(qual, module))
                        )
                    )
                    found = True
                if isinstance(module, _KINDS) and getattr(module, "dim", None) == 0:
                    qual = f"{prefix}{name}" if name else (prefix.rstrip(".") or "<model>")
                    self.handles.append(
                        module.register_forward_hook(
                            ctx.hook("probe softmax_dims", self._softmax_hook(qual, module))
                        )
                    )
                    found = True
        if not found:
            return
        for model in ctx.eager_models().values():
            self.handles.append(
                model.register_forward_pre_hook(ctx.hook("probe softmax_dims", self._enter))
            )

    def _enter(self, module: torch.nn.Module, args: tuple) -> None:
        x = _first_tensor(args)
        self._model_input = (x.dim(), int(x.shape[0]) if x.dim() else 0) if x is not None else None

    def _softmax_hook(self, qual: str, module: torch.nn.Module) -> Any:
        seen = self._seen.setdefault(qual, set())
        kind = type(module).__name__

        def hook(mod: torch.nn.Module, args: tuple, out: Any) -> None:
            x = _first_tensor(args)
            if x is None or x.dim() in seen:
                return
            seen.add(x.dim())
            ctx = self.ctx
            assert ctx is not None
            model_in = self._model_input
            self._rec.event(
                ctx.state.step,
                "softmax_call",
                module=qual,
                cls=kind,
                dim=0,
                shape=list(x.shape),
                model_input_rank=model_in[0] if model_in else None,
                model_input_lead=model_in[1] if model_in else None,
                grad=bool(torch.is_grad_enabled() and x.requires_grad),
            )

        return hook

    def _seq_hook(self, qual: str, module: torch.nn.Module) -> Any:
        seen: set[tuple[int, ...]] = set()
        kind = type(module).__name__

        def hook(mod: torch.nn.Module, args: tuple, out: Any) -> None:
            x = _first_tensor(args)
            if x is None or x.dim() != 3 or len(seen) >= MAX_SEQ_SHAPES:
                return
            if not (mod.training and torch.is_grad_enabled()):
                return
            shape = tuple(int(n) for n in x.shape)
            if shape in seen:
                return
            seen.add(shape)
            ctx = self.ctx
            assert ctx is not None
            model_in = self._model_input
            self._rec.event(
                ctx.state.step,
                "seq_layer_call",
                module=qual,
                cls=kind,
                shape=list(shape),
                model_input_rank=model_in[0] if model_in else None,
                model_input_lead=model_in[1] if model_in else None,
            )

        return hook

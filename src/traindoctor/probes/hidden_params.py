"""Trainable tensors a watched model holds where `model.parameters()` does not look (TD103).

Layers kept in a plain Python list or dict (`self.hids = [nn.Linear(...) ...]`, not
`nn.ModuleList`) and tensors set as plain attributes (`self.w = torch.zeros(n,
requires_grad=True)`, not `nn.Parameter`) run in the forward and get gradients, but
`model.parameters()` never returns them, so an optimizer built from it never holds them.

At attach, and again after the first sampled step (tensors made in the first forward), this
probe walks each watched module's attributes (not its registered params, buffers or children)
for leaf tensors that require grad, directly or inside lists, tuples and dicts (also of
modules, up to 3 levels). After the primary optimizer's step() on each sampled step it
records, for those no watched optimizer holds, whether each got a gradient and a fingerprint
of its values (sum and sum of squares): one `hidden_params` event per sampled step. Host work
is one attribute walk per module, twice; the per-step cost is one small stacked reduction.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import AttachContext, Probe, Recorder

# nn.Module's own attributes (hooks dicts, registries, flags): never user state.
_SKIP = frozenset(vars(torch.nn.Module())) | {"training"}
MAX_CANDIDATES = 256
MAX_ITEMS = 1000  # items read per container
MAX_DEPTH = 3


def _may_hold(value: Any, depth: int) -> bool:
    """Whether a trainable tensor may be in `value` (a quick look, no names)."""
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, torch.nn.Module):
        return depth > 0
    if isinstance(value, (str, int, float, bool)) or value is None or depth >= MAX_DEPTH:
        return False
    if isinstance(value, dict):
        value = list(value.values())[:MAX_ITEMS]
    elif isinstance(value, (list, tuple)):
        value = value[:MAX_ITEMS]
    else:
        return False
    return any(_may_hold(v, depth + 1) for v in value)


def _container_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (list, tuple)):
        return "list"
    return None


class HiddenParamsProbe(Probe):
    name = "hidden_params"
    provides: ClassVar[tuple[str, ...]] = ()
    provides_events: ClassVar[tuple[str, ...]] = ("hidden_params",)
    sampled_only: ClassVar[frozenset[str]] = frozenset({"on_post_step"})

    def __init__(self) -> None:
        super().__init__()
        # name -> (tensor, how it is held: "list", "dict" or "attribute", the module that holds
        # it, its attribute name there and the value that attribute held)
        self._found: dict[str, tuple[torch.Tensor, str, torch.nn.Module, str, Any]] = {}
        self._owner: tuple[torch.nn.Module, str, Any] | None = None
        self._ids: set[int] = set()
        self._walks = 0

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._walk()

    def _walk(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        self._walks += 1
        known = set(ctx.param_names)
        for prefix, model in ctx.models.items():
            # A first pass without names, over the modules of the user's own classes (torch's
            # layers keep their tensors registered): most hold nothing that may train.
            if not any(
                _may_hold(vars(m)[k], 0)
                for m in model.modules()
                if not type(m).__module__.startswith("torch.")
                for k in vars(m).keys() - _SKIP
            ):
                continue
            for mname, module in model.named_modules():
                if type(module).__module__.startswith("torch."):
                    continue
                qual = f"{prefix}{mname}" if mname else prefix.rstrip(".")
                for key in vars(module).keys() - _SKIP:
                    value = vars(module)[key]
                    name = f"{qual}.{key}" if qual else key
                    self._owner = (module, key, value)
                    self._visit(name, value, "attribute", known, 0)
                    if len(self._found) >= MAX_CANDIDATES:
                        return

    def _visit(self, name: str, value: Any, held: str, known: set[int], depth: int) -> None:
        if isinstance(value, torch.Tensor):
            if (
                value.requires_grad
                and value.is_leaf
                and id(value) not in known
                and id(value) not in self._ids
                and value.is_floating_point()
            ):
                assert self._owner is not None
                self._ids.add(id(value))
                self._found[name] = (value, held, *self._owner)
            return
        if isinstance(value, torch.nn.Module):
            if held == "attribute":  # a registered child: its params are the model's
                return
            for pname, p in value.named_parameters():
                self._visit(f"{name}.{pname}", p, held, known, depth)
            return
        kind = _container_kind(value)
        if kind is None or depth >= MAX_DEPTH:
            return
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for n, (k, item) in enumerate(items):
            if n >= MAX_ITEMS or len(self._found) >= MAX_CANDIDATES:
                return
            label = f"[{k!r}]" if kind == "dict" else f"[{k}]"
            self._visit(f"{name}{label}", item, kind, known, depth + 1)

    def on_post_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        if not sampled or self.ctx is None:
            return
        if self._walks < 2:
            self._walk()
        if not self._found:
            return
        held = self.ctx.optimizer_param_ids() | set(self.ctx.param_names)
        names, rows = [], []
        for name, (t, how, module, key, top) in self._found.items():
            # Still the model's (a cached input replaced since is not), and in no optimizer.
            if id(t) in held or vars(module).get(key) is not top:
                continue
            v = t.detach()
            g = t.grad
            gnorm = (
                g.detach().abs().sum().double()
                if g is not None
                else v.new_zeros((), dtype=torch.float64)
            )
            vd = v.double()
            rows.append(torch.stack([gnorm, vd.sum(), vd.square().sum()]))  # on its device
            names.append((name, how, v.numel(), list(v.shape)))
        if not rows:
            return
        values = _read_rows(rows)
        rec.event(
            step,
            "hidden_params",
            tensors=[
                {
                    "name": n,
                    "held": how,
                    "numel": numel,
                    "shape": shape,
                    "grad": row[0],
                    "fingerprint": [row[1], row[2]],
                }
                for (n, how, numel, shape), row in zip(names, values, strict=True)
            ],
        )

    def detach(self) -> None:
        super().detach()
        self._found.clear()
        self._ids.clear()


def _read_rows(rows: list[torch.Tensor]) -> list[list[float]]:
    """Each row's values on the host: one read per device (three .cpu() a tensor were three
    host syncs each on a GPU)."""
    by_device: dict[torch.device, list[int]] = {}
    for i, row in enumerate(rows):
        by_device.setdefault(row.device, []).append(i)
    out: list[list[float]] = [[] for _ in rows]
    for idx in by_device.values():
        for i, values in zip(idx, torch.stack([rows[i] for i in idx]).tolist(), strict=True):
            out[i] = values
    return out

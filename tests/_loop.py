"""A tiny CPU training loop shared by the probe and doctor tests, with brute-force oracles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import traindoctor as td

# Tiny models: one intra-op thread is much faster than several competing for a busy machine.
torch.set_num_threads(1)


def make_model(seed: int = 0, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)
    ]


OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd-momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1),
}


def make_scaler(kind: str | None) -> Any:
    if kind is None:
        return None
    return torch.amp.GradScaler("cpu", enabled=kind == "enabled", init_scale=2.0**10)


@dataclass
class Oracle:
    """Brute-force measurements taken by the test itself, indexed by optimizer step (1-based)."""

    grad_norms: dict[int, dict[str, float]] = field(default_factory=dict)
    updates: dict[int, dict[str, float]] = field(default_factory=dict)
    param_norms: dict[int, dict[str, float]] = field(default_factory=dict)
    losses: dict[int, list[float]] = field(default_factory=dict)
    carried: dict[int, dict[str, float]] = field(default_factory=dict)


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    *,
    doc: td.Doctor | None = None,
    scaler: Any = None,
    accum: int = 1,
    zero_grad: bool = True,
    set_to_none: bool = True,
    log: bool = False,
    validate_every: int = 0,
    oracle: Oracle | None = None,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """Train `steps` optimizer steps of `accum` micro-batches each; the same code with or without
    a Doctor (validation uses doc.validating() or the equivalent eval()/no_grad by hand)."""
    data = batches(steps * accum)
    names = [n for n, _ in model.named_parameters()]
    for step in range(1, steps + 1):
        if zero_grad:
            opt.zero_grad(set_to_none=set_to_none)
        if oracle is not None:
            oracle.carried[step] = {
                n: torch.linalg.vector_norm(p.grad).item()
                for n, p in model.named_parameters()
                if p.grad is not None
            }
        for k in range(accum):
            x, y = data[(step - 1) * accum + k]
            loss = nn.functional.cross_entropy(model(x), y)
            if oracle is not None:
                oracle.losses.setdefault(step, []).append(loss.item())
            if doc is not None and log:
                doc.log(loss=loss)
            scaled = loss / accum if accum > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if oracle is not None:
            # Grads are still multiplied by the scaler's scale (a power of two, so dividing the
            # norm is exact); scaler.step() unscales them before optimizer.step() runs.
            scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
            params = dict(model.named_parameters())
            oracle.grad_norms[step] = {
                n: torch.linalg.vector_norm(params[n].grad).item() / scale
                for n in names
                if params[n].grad is not None
            }
            before = {n: params[n].detach().clone() for n in names}
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if oracle is not None:
            oracle.updates[step] = {
                n: torch.linalg.vector_norm(params[n].detach() - before[n]).item() for n in names
            }
            oracle.param_norms[step] = {
                n: torch.linalg.vector_norm(before[n]).item() for n in names
            }
        if validate_every and step % validate_every == 0:
            x, y = data[0]
            if doc is not None:
                with doc.validating(model):
                    doc.log(loss=nn.functional.cross_entropy(model(x), y))
            else:
                modes = [(m, m.training) for m in model.modules()]
                model.eval()
                with torch.no_grad():
                    nn.functional.cross_entropy(model(x), y)
                for m, was in modes:
                    m.training = was
        if on_step is not None:
            on_step(step)


def watch(model, opt, tmp_path, scaler=None, **kw) -> td.Doctor:
    return td.watch(model, opt, scaler=scaler, out_dir=tmp_path / "runs", console=False, **kw)


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_bit_identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y), f"parameter {i} differs: max |Δ| = {(x - y).abs().max().item()}"


def assert_detached(model: nn.Module, opt: torch.optim.Optimizer, scaler: Any = None) -> None:
    """Every hook traindoctor installed is gone and the patched functions are the originals."""
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            assert not getattr(m, attr), f"module {name!r} still has {attr}"
    for name, p in model.named_parameters():
        assert not p._backward_hooks, f"param {name} still has backward hooks"
        assert not getattr(p, "_post_accumulate_grad_hooks", None), name
    assert not opt._optimizer_step_pre_hooks
    assert not opt._optimizer_step_post_hooks
    assert torch.Tensor.backward is ORIGINAL_BACKWARD
    assert torch.autograd.backward is ORIGINAL_AUTOGRAD_BACKWARD
    if scaler is not None:
        assert "scale" not in vars(scaler) and "update" not in vars(scaler)


ORIGINAL_BACKWARD = torch.Tensor.backward
ORIGINAL_AUTOGRAD_BACKWARD = torch.autograd.backward

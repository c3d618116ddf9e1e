"""No host synchronisation per step (issue 15): an audit of every tensor->Python read.

On CUDA a read of a device value (`.item()`, `.tolist()`, `bool(t)`, `.cpu()`, `nonzero`, a
boolean mask...) makes the host wait for every queued kernel. No GPU runs these tests, so the
audit counts the reads traindoctor makes on CPU with the numerics probe's device path forced
(`numerics.CPU_READS_FREE = False`: on CPU a read waits for nothing and the probe reads its
flags at once). A TorchFunctionMode entered around each audited step sees every read; one is
traindoctor's when the nearest frame outside torch is in the package. Allowed: the batched
read-backs (one transfer per device every `READBACK_EVERY` steps, and on sampled steps).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import traindoctor as td
from traindoctor.probes import numerics
from traindoctor.steps import READBACK_EVERY

PACKAGE = str(Path(td.__file__).parent)
TORCH = str(Path(torch.__file__).parent)
# Tensor -> Python reads: each one a host sync when the tensor is on a device.
READS = {
    "item",
    "tolist",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "__array__",
    "numpy",
    "nonzero",
    "cpu",
    "is_nonzero",
    "equal",
    "allclose",
    "masked_select",
    "unique",
    "__format__",
    "__repr__",
}


def _to_host(func, args, kwargs) -> bool:
    """`.to(...)` / `.copy_` to the CPU, or indexing with a boolean mask (a nonzero)."""
    name = getattr(func, "__name__", "")
    values = [*args[1:], *kwargs.values()]
    if name == "to":
        return any(v == "cpu" or (isinstance(v, torch.device) and v.type == "cpu") for v in values)
    if name == "__getitem__":
        index = args[1] if len(args) > 1 else None
        parts = index if isinstance(index, tuple) else (index,)
        return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)
    return False


class ReadAudit(TorchFunctionMode):
    """Counts traindoctor's tensor->Python reads, by (function, file:line)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[tuple[str, str]] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in READS or _to_host(func, args, kwargs):
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(PACKAGE):
                where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
                self.reads[(name, where)] += 1
        return func(*args, **kwargs)


def test_the_audit_sees_each_kind_of_read():
    audit = ReadAudit()
    t = torch.ones(3)
    with audit:
        t.sum().item(), t.tolist(), bool(t[0]), float(t[0]), int(t[0]), t.cpu()
        t.to("cpu"), t[t > 0], t.nonzero()
    # The reads above are the test's own: none is traindoctor's.
    assert not audit.reads
    seen = ReadAudit()
    with seen:
        numerics._read([torch.tensor(True)])  # a read inside the package
    assert [name for name, _ in seen.reads] == ["tolist"]


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4)
    )


class _Tiny(nn.Module):
    """An attention-and-LayerNorm model (another op mix than the MLP's)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 32)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        return self.head(x)


def _audit_run(tmp_path, style: str, steps: int = 120) -> tuple[dict[int, Counter], set[int]]:
    """Train with the reads of steps 4.. audited: per-step reads, and the sampled steps."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if style == "tiny-attention":
        model: nn.Module = _Tiny()
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = [
            (torch.randint(0, 32, (4, 8), generator=g), torch.randint(0, 32, (4, 8), generator=g))
            for _ in range(4)
        ]

        def loss_fn(out, y):
            return F.cross_entropy(out.flatten(0, 1), y.flatten())
    else:
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        batches = [
            (torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g))
            for _ in range(4)
        ]
        loss_fn = F.cross_entropy
    per_step: dict[int, Counter] = {}
    sampled: set[int] = set()
    doc = td.watch(model, opt, out_dir=tmp_path / style, console=False)
    for i in range(steps):
        x, y = batches[i % len(batches)]
        step = doc.step
        if doc.budget.sampled(step):
            sampled.add(step)
        audit = ReadAudit() if step > 3 else None
        if audit is not None:
            audit.__enter__()
        try:
            opt.zero_grad()
            if style == "closure":
                # The optimizer calls the closure: the backward runs inside step().
                def closure(x=x, y=y):
                    loss = loss_fn(model(x), y)
                    loss.backward()
                    return loss

                loss = opt.step(closure)
            else:
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
            doc.log(loss=loss)
        finally:
            if audit is not None:
                audit.__exit__(None, None, None)
                per_step[step] = audit.reads
    doc.close()
    assert not doc.report.internal_errors, doc.report.internal_errors
    return per_step, sampled


@pytest.mark.slow
@pytest.mark.parametrize(
    "every_step_grad_check", [False, True], ids=["sampled-grads", "every-step-grads"]
)
@pytest.mark.parametrize("style", ["mlp", "tiny-attention", "closure"])
def test_no_read_on_an_unsampled_step(tmp_path, monkeypatch, style, every_step_grad_check):
    monkeypatch.setattr(numerics, "CPU_READS_FREE", False)  # the device path, on CPU
    # The gradient finiteness check on every step (where predicted affordable), or only on
    # sampled steps: both must leave unsampled steps without a read.
    monkeypatch.setattr(numerics, "EVERY_STEP_MAX", 1.0 if every_step_grad_check else 0.0)
    per_step, sampled = _audit_run(tmp_path, style)
    unsampled = [s for s in per_step if s not in sampled]
    assert len(unsampled) > 60
    read_back = {s for s in unsampled if s % READBACK_EVERY == 0}
    offending = {s: dict(per_step[s]) for s in unsampled if s not in read_back and per_step[s]}
    assert not offending, f"reads on unsampled steps: {offending}"
    # The batched read-backs: a few transfers per device, not one per value or per step.
    for s in read_back | sampled:
        if s in per_step:
            assert sum(per_step[s].values()) <= 4, (s, dict(per_step[s]))


def test_a_nonfinite_loss_read_late_keeps_its_step(tmp_path, monkeypatch):
    """On the device path the loss of step 7 turns NaN: its flag is read at a later read, and
    the finding still names step 7."""
    monkeypatch.setattr(numerics, "CPU_READS_FREE", False)
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for i in range(1, 31):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if i == 7:
            loss = loss * torch.log(torch.zeros(()))  # -inf * finite: NaN from step 7 on
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    doc.close()
    assert not doc.report.internal_errors
    nonfinite = [f for f in doc.report.findings if f.code in ("TD201", "TD202", "TD203")]
    assert nonfinite and nonfinite[0].step == 7, [(f.code, f.step) for f in nonfinite]

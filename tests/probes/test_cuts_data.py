"""A `.data` cut while traindoctor is attached: its own `Tensor.data` patch (hand-written weight
updates, _patches.DataWatch) made `.data` a Python property, which reached the cut tracker as
an unnamed property read from a traindoctor frame (the getter), so the cut was not recorded and
TD302 fell back to its graph-only wording. The patched property is named "data" as torch's
descriptor is, and its getter's frame is passed over as the caller's: the cut is recorded as
`.data` with its line, as a `.detach()` cut is, and training is bit-identical."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import traindoctor as td
from tests._loop import assert_bit_identical, params_of, watch
from traindoctor import _patches


def _loop(doc_fn, steps=6, bug=True, patched=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = doc_fn(model, opt) if doc_fn else None
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        aux = (logits.data if bug else logits).pow(2).mean()  # CUT
        if patched is not None:
            patched.append(_patches.data_is_patched())
        loss = ce + 0.1 * aux
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, doc


def _cut_line() -> str:
    lines = inspect.getsource(inspect.getmodule(_cut_line)).splitlines()
    return f"test_cuts_data.py:{next(i for i, t in enumerate(lines, 1) if '# CUT' in t)}"


def test_a_data_cut_is_named_while_the_data_patch_is_on(tmp_path):
    plain, _ = _loop(None)
    patched: list[bool] = []
    watched, doc = _loop(lambda m, o: watch(m, o, tmp_path), patched=patched)
    assert patched[0]  # the patch this is about was on in the first step's loss code
    report = doc.close()
    assert_bit_identical(params_of(plain), params_of(watched))
    assert not report.internal_errors, report.internal_errors
    top = report.findings[0]
    assert top.code == "TD302" and top.evidence["cut"] == "data", (top.title, top.evidence)
    assert "`.data`" in top.title
    assert top.evidence["cut_at"].endswith(_cut_line())
    assert torch._C._len_torch_function_stack() == 0
    assert "data" not in vars(torch.Tensor)  # restored: torch's own descriptor again


def test_the_patched_property_reads_as_torch_s_own_in_a_mode():
    seen = []

    class Names(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") == "__get__":
                seen.append(getattr(getattr(func, "__self__", None), "__name__", None))
            return func(*args, **(kwargs or {}))

    x = torch.randn(3, requires_grad=True)
    w = _patches.DataWatch()
    for patched in (False, True):
        if patched:
            _patches.add_data_watch(w)
        try:
            with Names():
                y = x.data
        finally:
            if patched:
                _patches.remove_data_watch(w)
        assert y.data_ptr() == x.data_ptr() and not y.requires_grad
    assert seen == ["data", "data"]
    assert "data" not in vars(torch.Tensor)


@pytest.mark.parametrize("cut", ["data", "detach"])
def test_hand_written_sgd_names_the_cut_as_for_detach(cut, tmp_path):
    """No torch optimizer: the `.data` patch stays on for the whole run (the hand-written
    update reads `p.data` too); `.data` is reported as `.detach()` is."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    doc = td.watch(model, out_dir=tmp_path, console=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        logits = model(x)
        penalty = (logits.data if cut == "data" else logits.detach()).pow(2).mean()  # PENALTY
        loss = F.cross_entropy(logits, y) + 0.1 * penalty
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.data.add_(p.grad.data, alpha=-0.05)
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    top = report.findings[0]
    assert top.code == "TD302" and top.evidence["cut"] == cut, (top.title, top.evidence)
    lines = inspect.getsource(inspect.getmodule(_cut_line)).splitlines()
    at = next(i for i, t in enumerate(lines, 1) if "# PENALTY" in t)
    assert top.evidence["cut_at"].endswith(f"test_cuts_data.py:{at}")

"""A loss summed into a start of 0 that is a tensor: YOLOv5's `lbox = torch.zeros(1); lbox += ...`,
`total = torch.zeros(()); total = total + part`, a MAML meta-loss. The first add's graph node has
a None input, as a detached term's has: TD302 said error on these healthy programs. A start of
0 adds nothing to the loss, so nothing is lost whatever its origin; a detached part is still
caught."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.findings import Severity


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def yolo_inplace(out: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
    lbox, lobj = torch.zeros(1), torch.zeros(1)
    lbox += F.smooth_l1_loss(out[:, :2], y[:, :2])
    lobj += F.mse_loss(out[:, 2], y[:, 2])
    return (lbox * 0.05 + lobj) * out.shape[0]


def functional_sum(out: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
    total = torch.zeros(())
    for i in range(3):
        total = total + F.mse_loss(out[:, i], y[:, i])
    return total


def tensor_literal_start(out, y, start) -> torch.Tensor:
    loss = torch.tensor(0.0)
    loss += F.mse_loss(out, y)
    return loss


def start_made_before_the_forward(out, y, start) -> torch.Tensor:
    assert start is not None
    start.zero_()
    start += F.mse_loss(out, y)  # in place: `start` now carries the graph
    return start.sum()


def zeros_like_start(out, y, start) -> torch.Tensor:
    acc = torch.zeros_like(out[0, 0])
    acc = acc + F.l1_loss(out, y)
    return acc


HEALTHY: list[Callable] = [
    yolo_inplace,
    functional_sum,
    tensor_literal_start,
    start_made_before_the_forward,
    zeros_like_start,
]


def detached_part(out, y, start) -> torch.Tensor:
    total = torch.zeros(())
    total = total + F.mse_loss(out, y)
    return total + 0.5 * out[:, 0].detach().pow(2).mean()  # BUG: trains nothing


def _run(loss_fn: Callable, tmp_path) -> list:
    torch.manual_seed(0)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.002)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for _ in range(30):
        x = torch.randn(64, 6)
        y = torch.tanh(x[:, :3] + x[:, 3:])
        start = torch.zeros(1)  # before the forward: outside the loss code's window
        loss = loss_fn(model(x), y, start)
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = doc.close()
    assert not report.internal_errors
    return report.findings


@pytest.mark.parametrize("loss_fn", HEALTHY, ids=lambda f: f.__name__)
def test_a_running_sum_started_from_zeros_is_no_detached_term(loss_fn, tmp_path):
    loud = [f for f in _run(loss_fn, tmp_path) if f.severity in (Severity.ERROR, Severity.WARNING)]
    assert not loud, [(f.code, f.title) for f in loud]


def test_a_detached_part_beside_a_zero_start_is_still_caught(tmp_path):
    findings = _run(detached_part, tmp_path)
    top = next(f for f in findings if f.code == "TD302")
    assert top.severity == Severity.ERROR
    assert top.evidence.get("cut") == "detach"


@pytest.mark.parametrize("loss_fn", [yolo_inplace, functional_sum, zeros_like_start])
def test_zeros_made_in_the_loss_code_are_known_without_reading_them(loss_fn, tmp_path, monkeypatch):
    """On a device the start is not read (a sync): a zeros factory called in the loss code is
    known as a start by the call alone. Forced here by switching the CPU read off."""
    from traindoctor.probes import cuts

    monkeypatch.setattr(cuts, "ZERO_CHECK_NUMEL", 0)
    loud = [f for f in _run(loss_fn, tmp_path) if f.severity in (Severity.ERROR, Severity.WARNING)]
    assert not loud, [(f.code, f.title) for f in loud]

"""The user's anomaly-mode contexts end as they do without traindoctor.

The probes switch anomaly mode on from the end of a structural step's forward to its backward
(to record each node's line); a `detect_anomaly()` the loss code opened inside that window used
to capture our state as its "previous" one and left anomaly mode on for the rest of the process
once it exited (every later run in the process was slower and read the user's lines as ours).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import anomaly_mode

import traindoctor as td


@pytest.fixture(autouse=True)
def _torch_defaults_after():
    yield
    torch.set_anomaly_enabled(False, True)  # whatever a failing test left on


def _state() -> tuple[bool, bool]:
    return (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())


def _backward_in_context(loss: torch.Tensor, seen: list) -> None:
    with torch.autograd.detect_anomaly(check_nan=True):
        seen.append(_state())
        loss.backward()


def _backward_in_context_without_nan_checks(loss: torch.Tensor, seen: list) -> None:
    with torch.autograd.detect_anomaly(check_nan=False):
        seen.append(_state())
        loss.backward()


def _set_globally_then_backward(loss: torch.Tensor, seen: list) -> None:
    torch.autograd.set_detect_anomaly(True)  # on for the rest of the process, as the user asked
    seen.append(_state())
    loss.backward()


def _set_context_then_backward(loss: torch.Tensor, seen: list) -> None:
    with torch.autograd.set_detect_anomaly(True, check_nan=False):
        seen.append(_state())
        loss.backward()


def _run(
    backward: Callable[[torch.Tensor, list], None], watch: bool, tmp_path, reset: bool = True
) -> tuple:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False) if watch else None
    seen: list = []
    after: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Anomaly Detection has been enabled"
        for _ in range(4):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            backward(loss, seen)
            after.append(_state())
            opt.step()
    report = doc.close() if doc is not None else None
    end = _state()
    if reset:
        torch.set_anomaly_enabled(False, True)  # torch's defaults, for the next test
    params = [p.detach().clone() for p in model.parameters()]
    return seen, after, end, params, report


@pytest.mark.parametrize(
    "backward",
    [
        _backward_in_context,
        _backward_in_context_without_nan_checks,
        _set_globally_then_backward,
        _set_context_then_backward,
    ],
)
def test_the_users_anomaly_mode_is_what_it_is_without_traindoctor(backward, tmp_path):
    torch.set_anomaly_enabled(False, True)
    plain = _run(backward, False, tmp_path / "plain")
    watched = _run(backward, True, tmp_path / "watched")
    assert watched[0] == plain[0]  # inside the user's context
    assert watched[1] == plain[1]  # after it, step by step
    assert watched[2] == plain[2]  # after the run
    for a, b in zip(plain[3], watched[3], strict=True):
        assert torch.equal(a, b)
    assert not watched[4].internal_errors
    # Our patches of the two contexts are gone with the doctor.
    assert "__wrapped__" not in vars(anomaly_mode.detect_anomaly.__init__)
    assert "__wrapped__" not in vars(anomaly_mode.set_detect_anomaly.__init__)


def test_a_later_doctor_still_records_lines_after_a_users_anomaly_context(tmp_path):
    """The leak's symptom: a zero-code run after such a run found anomaly mode on, so its own
    windows never opened and the planted cut's line was lost."""
    from traindoctor.scenarios import get
    from traindoctor.scenarios.demo import run_scenario

    torch.set_anomaly_enabled(False, True)
    _run(_backward_in_context, True, tmp_path / "first", reset=False)
    report = run_scenario(get("aux_loss_no_grad"), out_dir=tmp_path / "second", watch=False)
    assert report.findings[0].evidence["cut"] == "no_grad"
    assert _state() == (False, True)
    torch.set_anomaly_enabled(False, True)

"""The lr probe (experiments/recipe.py `_lr_probe`, worded by TD706): its verdicts from the
overfit-one-batch curves, and the lower lrs it adds when the loss blows up even at 0.1x, on a
real run with the experiments on."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor import experiments
from traindoctor.experiments.recipe import _lr_probe
from traindoctor.experiments.runner import Batch, Setup

NAN = float("nan")


def _setup(loss_fn: str = "mse_loss") -> Setup:
    batch = Batch(
        args=(torch.zeros(4, 2),),
        kwargs={},
        loss_fn=loss_fn,
        loss_args=(),
        loss_kwargs={},
        target=torch.zeros(4),
        out_index=0,
        view=None,
        out_layout=((4,), (1,), 0),
        step=1,
    )
    return Setup(model=nn.Linear(2, 1), init_state=None, optimizer_class=None, batch=batch)


def _overfit(verdict: str, curves: dict) -> dict:
    return {"verdict": verdict, "curves": curves, "facts": {"lr": [0.1], "optimizer": "SGD"}}


def _falling(start: float, end: float, n: int = 51) -> list[float]:
    return [start + (end - start) * (i / (n - 1)) ** 0.3 for i in range(n)]


FLAT = [2.0] * 51


@pytest.mark.parametrize(
    "verdict, curves, expected, better",
    [
        ("ok", {"lr x1": _falling(2.0, 0.01)}, "fits_as_written", None),
        # x1 blows up, x10 too; x0.1 fits: too high.
        (
            "ok",
            {"lr x1": [2.0, 5.0, NAN], "lr x10": [2.0, NAN], "lr x0.1": _falling(2.0, 0.1)},
            "too_high",
            0.1,
        ),
        # x1 spikes above 1.5x its start, then recovers and fits: not the cause.
        ("ok", {"lr x1": [2.0, 4.0] + _falling(2.0, 0.01, 49)}, "fits_as_written", None),
        # x1 spikes and stays high (not NaN), x0.1 gets half-way: too high.
        (
            "ok",
            {"lr x1": [2.0, 6.0, 5.0, 4.0], "lr x10": [2.0, NAN], "lr x0.1": _falling(2.0, 0.9)},
            "too_high",
            0.1,
        ),
        # x1 does not move, x10 fits: too low.
        ("ok", {"lr x1": _falling(2.0, 1.95), "lr x10": _falling(2.0, 0.05)}, "too_low", 10.0),
        # x1 gets half-way, x10 fits: an lr that trains is not called the cause.
        ("ok", {"lr x1": _falling(2.0, 0.8), "lr x10": _falling(2.0, 0.05)}, "inconclusive", None),
        # Nothing fits and nothing blew up: not the lr.
        (
            "failed",
            {k: _falling(2.0, 1.5) for k in ("lr x1", "lr x10", "lr x0.1")},
            "not_the_lr",
            None,
        ),
        # Partly everywhere: cannot tell.
        (
            "partial",
            {k: _falling(2.0, 0.7) for k in ("lr x1", "lr x10", "lr x0.1")},
            "inconclusive",
            None,
        ),
    ],
    ids=["fits", "too_high", "spike", "stays_up", "too_low", "halfway", "not_the_lr", "partial"],
)
def test_verdicts_from_the_overfit_curves(verdict, curves, expected, better):
    out = _lr_probe(_setup(), _overfit(verdict, curves))
    assert out["verdict"] == expected, out["facts"]
    assert out["facts"]["better_lr_scale"] == better
    assert out["steps"] == 0  # nothing trained beyond the overfit's runs
    assert list(out["curves"]) == sorted(out["curves"], key=lambda k: float(k[4:]))


def test_not_measured_without_the_overfit():
    assert _lr_probe(_setup(), None)["verdict"] == "not_measured"
    assert _lr_probe(_setup(), {"verdict": "not_measured"})["verdict"] == "not_measured"


def _train(lr: float, steps: int, watch) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g) * 3
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    doc = watch(model, opt)
    for i in range(steps):
        xb, yb = x[i % 4 * 16 : i % 4 * 16 + 16], y[i % 4 * 16 : i % 4 * 16 + 16]
        opt.zero_grad()
        loss = F.mse_loss(model(xb).squeeze(1), yb)
        loss.backward()
        opt.step()
        if not torch.isfinite(loss):
            break
    return doc


def test_lower_lrs_when_even_a_tenth_blows_up(tmp_path):
    """Plain SGD at lr 3 on a linear regression with inputs of scale 3: x1 and x0.1 blow up
    on one batch, x0.01 fits; the probe says so and by how much to lower the lr."""
    torch.manual_seed(0)
    with experiments.enable():
        doc = _train(3.0, 6, lambda m, o: td.watch(m, o, out_dir=tmp_path, console=False))
        report = doc.close()
    events = {e["name"]: e for e in report.timeline.events("experiment")}
    probe = events["lr_probe"]
    assert probe["verdict"] == "too_high", probe
    assert {"lr x0.01"} <= set(probe["curves"]) and probe["steps"] >= 50
    assert probe["facts"]["better_lr_scale"] in (0.01, 0.001)
    f = next(f for f in report.findings if f.code == "TD706")
    assert f.title.startswith("The lr is the cause (too high)") and "lower the lr about" in f.fix

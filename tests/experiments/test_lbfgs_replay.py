"""LBFGS on the copy: K replayed steps cost about K forward/backward passes, as with any other
optimizer, not K x max_iter (pytorch/examples' time_sequence_prediction took minutes)."""

from __future__ import annotations

import torch
import torch.nn as nn

from traindoctor.experiments.runner import Batch, Setup, train_copy


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.body(x)


def _setup(model: nn.Module, line_search: str | None) -> Setup:
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = x.sum(1, keepdim=True).sin()
    batch = Batch(
        args=(x,),
        kwargs={},
        loss_fn="mse_loss",
        loss_args=(),
        loss_kwargs={},
        target=y,
        out_index=0,
        view=None,
        out_layout=((32, 1), (1, 1), 0),
        step=1,
    )
    settings = {"lr": 0.8, "max_iter": 20, "max_eval": 25, "line_search_fn": line_search}
    return Setup(
        model=model,
        init_state=None,
        optimizer_class=torch.optim.LBFGS,
        groups=[(list(range(len(list(model.parameters())))), settings)],
        batch=batch,
    )


def test_each_replayed_step_is_one_iteration():
    for line_search in (None, "strong_wolfe"):
        model = _Counting()
        setup = _setup(model, line_search)
        curve = train_copy(setup, 10, model=model)
        assert len(curve.losses) == 11 and not curve.diverged
        assert curve.losses[-1] < 0.5 * curve.losses[0]  # it still optimizes
        # 10 steps: one loss and about one closure each, a few more under line search.
        assert model.calls <= 10 * 4 + 1, (line_search, model.calls)
        # The run's own settings are not changed by the copy's optimizer.
        assert setup.groups[0][1]["max_iter"] == 20 and setup.groups[0][1]["max_eval"] == 25

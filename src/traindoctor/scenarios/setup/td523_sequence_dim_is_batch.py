"""TD523: an LSTM classifier built without batch_first=True and fed (batch, seq, features)
(yunjey/pytorch-tutorial#196): the recurrence runs along the batch, each example's output
depends on the examples before it, and the time steps are read as separate sequences.

`bug=True` keeps the default batch_first=False; the healthy twin `lstm_batch_first` passes
batch_first=True."""

from functools import partial

import torch
import torch.nn as nn

from .._base import Scenario, log


class _RNN(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=batch_first)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


def train(steps: int = 30, watch=None, bug: bool = False):
    g = torch.Generator().manual_seed(23)
    torch.manual_seed(23)
    protos = torch.randn(4, 12, 8, generator=g)
    model = _RNN(batch_first=not bug)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    doc = watch(model, optimizer) if watch else None
    for _ in range(steps):
        y = torch.randint(0, 4, (32,), generator=g)
        x = protos[y] + torch.randn(32, 12, 8, generator=g)  # (batch, seq, features)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="lstm_seq_first_fed_batch_first",
        bug="nn.LSTM without batch_first=True fed (batch, seq, features)",
        train=partial(train, bug=True),
        expect=("TD523",),
        top="TD523",
        where={"module": "lstm"},
        twin="lstm_batch_first",
        steps=30,
    ),
    Scenario(name="lstm_batch_first", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train(bug=True)

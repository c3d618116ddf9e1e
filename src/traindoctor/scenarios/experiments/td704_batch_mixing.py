"""TD704: batch independence, d output[i] / d input[j] with BatchNorm in eval mode.

- `lstm_not_batch_first`: an LSTM built without `batch_first=True` is fed (B, T, D) batches:
  it runs along the batch, so each example's output depends on the examples before it
  (confirms, and names the op);
- `softmax_dim0`: the classifier ends in `log_softmax(dim=0)` (over the batch) before
  `nll_loss` (confirms, op LogSoftmaxBackward0);
- `batchnorm`: a model with BatchNorm1d, which mixes the batch in train mode and is the
  plausible suspect when a model looks batch-dependent: in eval mode its examples are
  independent (refutes it);
- the healthy twin: `batch_first=True`.
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, log


class SeqClassifier(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 16, batch_first=batch_first)  # BUG if batch_first=False
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # x: (B, T, D)
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class MLP(nn.Module):
    def __init__(self, norm: bool, log_softmax_dim0: bool) -> None:
        super().__init__()
        self.log_softmax_dim0 = log_softmax_dim0
        layers = [nn.Linear(6 * 5, 32)] + ([nn.BatchNorm1d(32)] if norm else []) + [nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        logits = self.head(self.body(x.flatten(1)))
        if self.log_softmax_dim0:
            return F.log_softmax(logits, dim=0)  # BUG: normalized over the batch
        return F.log_softmax(logits, dim=1)


def sequences(n: int = 256, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, 6, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long() + (x[:, -1, 0] > 1).long()
    return x, y


def train(steps: int = 20, watch=None, bug: str | None = None):
    x, y = sequences()
    if bug in ("softmax_dim0", "batchnorm"):
        model = MLP(norm=bug == "batchnorm", log_softmax_dim0=bug == "softmax_dim0")
    else:
        model = SeqClassifier(batch_first=bug != "lstm_not_batch_first")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=16, seed=7)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        loss = F.nll_loss(out, yb) if isinstance(model, MLP) else F.cross_entropy(out, yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="exp_batch_lstm_not_batch_first",
        bug="nn.LSTM without batch_first=True fed (B, T, D): it runs along the batch",
        train=partial(train, bug="lstm_not_batch_first"),
        expect=("TD704",),
        top="TD704",
        twin="exp_batch_independent",
        steps=20,
        experiments=True,
    ),
    Scenario(
        name="exp_batch_log_softmax_dim0",
        bug="log_softmax over dim 0 (the batch) before nll_loss",
        train=partial(train, bug="softmax_dim0"),
        expect=("TD704",),
        top="TD704",
        twin="exp_batch_independent",
        steps=20,
        experiments=True,
    ),
    Scenario(
        name="exp_batch_batchnorm_is_fine",
        bug="BatchNorm1d suspected of mixing the batch: independent in eval mode (refuted)",
        train=partial(train, bug="batchnorm"),
        expect=("TD704",),
        top="TD704",
        twin="exp_batch_independent",
        steps=20,
        experiments=True,
    ),
    Scenario(name="exp_batch_independent", bug="", train=train, steps=20, experiments=True),
)

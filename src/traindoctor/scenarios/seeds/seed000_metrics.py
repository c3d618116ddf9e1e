"""TD404 (seed 000): validation metrics that stay 0 while the loss falls. A per-epoch validator
computes the metrics correctly into `validator.results`, but the end-of-epoch callback reads
`validator.metrics`, which is only filled in at the end of training:
`validator.metrics or {"mAP": 0.0, ...}` logs the default zeros every epoch."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import (
    MultilabelAveragePrecision,
    MultilabelPrecision,
    MultilabelRecall,
)

from .._base import Scenario, log, validating

LABELS = 4
EPOCH = 10  # optimizer steps per epoch


def tagged_data(n: int, seed: int, dim: int = 16):
    """Inputs and multi-hot "objects present" labels from a fixed random linear map."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, LABELS, generator=g)
    return x, (x @ w > 0.5).long()


class Validator:
    """Runs the validation once per epoch, like a framework's validator object."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.results = None  # set by __call__, every epoch
        self.metrics = None  # set by finalize(), once training is over

    def __call__(self, model, doc=None) -> dict:
        metrics = {
            "mAP": MultilabelAveragePrecision(num_labels=LABELS),
            "precision": MultilabelPrecision(num_labels=LABELS),
            "recall": MultilabelRecall(num_labels=LABELS),
        }
        with validating(doc, model):
            for x, y in self.loader:
                p = model(x).sigmoid()
                for m in metrics.values():
                    m.update(p, y)
        self.results = {k: float(m.compute()) for k, m in metrics.items()}
        return self.results

    def finalize(self) -> None:
        self.metrics = self.results


def on_fit_epoch_end(validator: Validator, doc, bug: bool) -> None:
    if bug:  # BUG: .metrics is still None here; the zeros are a default, not a result
        metrics = validator.metrics or {"mAP": 0.0, "precision": 0.0, "recall": 0.0}
    else:
        metrics = validator.results
    log(doc, **{f"val_{k}": v for k, v in metrics.items()})


def train(steps: int = 60, watch=None, bug: bool = False):
    torch.manual_seed(0)
    data, labels = tagged_data(384, seed=0)
    x, y, xv, yv = data[:320], labels[:320], data[320:], labels[320:]
    validator = Validator([(xv[i : i + 32], yv[i : i + 32]) for i in (0, 32)])
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, LABELS))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    doc = watch(model, optimizer) if watch else None
    for step in range(steps):
        i = (step * 32) % 320
        optimizer.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(x[i : i + 32]), y[i : i + 32].float())
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if (step + 1) % EPOCH == 0:
            validator(model, doc)
            on_fit_epoch_end(validator, doc, bug)
    validator.finalize()
    return validator.metrics


SCENARIOS = (
    Scenario(
        name="seed000_metrics_stale_attribute",
        bug="the epoch-end callback reads validator.metrics (set only after training) instead of "
        "validator.results: `metrics or {'mAP': 0.0, ...}` logs zeros every epoch",
        train=partial(train, bug=True),
        expect=("TD404",),
        top="TD404",
        twin="seed000_metrics_fresh_attribute",
        steps=60,
        modes=("watch",),  # the metrics reach traindoctor only through doc.log(...)
    ),
    # The epoch-end callback logs `validator.results`, which the validator has just filled in.
    Scenario(name="seed000_metrics_fresh_attribute", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    SCENARIOS[0].train()

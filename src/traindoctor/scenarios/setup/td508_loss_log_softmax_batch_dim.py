"""TD508: a time-major sequence classifier (GRU over (T, B, F), attention pooled over time with a
softmax over dim 0) ends in `F.log_softmax(logits, dim=0)`: the habit of dim 0 carried over
from the time axis to the (B, C) logits. Each class's scores are normalized over the batch, not
each sample's over the classes; nll_loss reads classes along dim 1, so the loss still falls
while the model learns to rank samples of a batch against each other."""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, line_in, log
from ._seq_models import TimeMajorClassifier, sequence_classes


def train(steps: int = 40, watch=None, bug: bool = False):
    x, y = sequence_classes(seed=5)
    model = TimeMajorClassifier(out_dim=0 if bug else 1)  # BUG if 0: over the batch
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=5)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(xb.transpose(0, 1)), yb)  # the loss line
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="loss_log_softmax_batch_dim",
        bug="log_softmax(logits, dim=0) on (B, C) logits into nll_loss: normalized over the batch",
        train=partial(train, bug=True),
        expect=("TD508",),
        top="TD508",
        where={"source": line_in(__file__, "# the loss line")},
        twin="loss_log_softmax_class_dim",
        steps=40,
    ),
    # `log_softmax` over dim 1 (the classes) of the (B, C) logits. The attention pooling inside the
    # model still takes a softmax over dim 0 (the time steps of the (T, B) scores): a legitimate
    # softmax over dim 0 that is no loss input.
    Scenario(name="loss_log_softmax_class_dim", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()

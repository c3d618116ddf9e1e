"""TD506: the model ends in a softmax and its probabilities go to nn.CrossEntropyLoss, which
applies log-softmax again: the loss can never go below log(1 + 3/e) = 0.74 over 4 classes."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, line_in, log
from .._nets import Classifier


def train(steps: int = 40, watch=None, bug: bool = False):
    x, y = classification_data(n=512, seed=21)
    model = Classifier()
    teacher = Classifier().requires_grad_(False)  # a frozen teacher (healthy twin: distillation)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    criterion = nn.CrossEntropyLoss(label_smoothing=0.0 if bug else 0.1)
    data = batches(x, y, batch=32, seed=21)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        if not bug:
            # Logits to CE with label smoothing, plus distillation on soft *targets*.
            with torch.no_grad():
                soft = F.softmax(teacher(xb) / 2.0, dim=1)
            kd = F.kl_div(F.log_softmax(logits / 2.0, dim=1), soft, reduction="batchmean")
            loss = criterion(logits, yb) + 0.1 * kd
        else:
            loss = criterion(logits.softmax(dim=1), yb)  # BUG: probabilities, not logits
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="loss_double_softmax",
        bug="nn.CrossEntropyLoss fed softmax outputs: softmax applied twice, loss floor 0.74",
        train=partial(train, bug=True),
        expect=("TD506",),
        top="TD506",
        where={"source": line_in(__file__, "# BUG: probabilities, not logits")},
        twin="loss_logits_smoothing_distill",
        steps=40,
    ),
    # Logits to CrossEntropyLoss with label smoothing, plus a distillation term whose *targets*
    # are a teacher's probabilities (fine: only inputs matter).
    Scenario(name="loss_logits_smoothing_distill", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()

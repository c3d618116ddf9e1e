"""TD508: a token tagger's (B, T, C) logits are given to cross_entropy, which wants the classes
in dim 1, through `logits.reshape(B, C, T)`: a reshape, not a transpose. The shapes now match
the (B, T) tags, torch raises nothing, and every tag is scored against values of other tokens
and classes: the loss barely falls while the healthy twin's drops fast."""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, line_in, log
from ._seq_models import Tagger, tagging_data


def train(steps: int = 40, watch=None, bug: bool = False):
    tokens, tags = tagging_data(seed=9)
    model = Tagger()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    data = batches(tokens, tags, batch=32, seed=9)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)  # (B, T, C)
        b, t, c = logits.shape
        if not bug:
            loss = F.cross_entropy(logits.transpose(1, 2), yb)
        else:
            loss = F.cross_entropy(logits.reshape(b, c, t), yb)  # BUG: reshape, not transpose
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="loss_ce_seq_reshape",
        bug="cross_entropy(logits.reshape(B, C, T), tags) on (B, T, C) logits: reshape, not transpose",
        train=partial(train, bug=True),
        expect=("TD508",),
        top="TD508",
        where={"source": line_in(__file__, "# BUG: reshape"), "module": "head"},
        twin="loss_ce_seq_transpose",
        steps=40,
    ),
    # The (B, T, C) logits go to cross_entropy as `logits.transpose(1, 2)`, classes in dim 1.
    Scenario(name="loss_ce_seq_transpose", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()

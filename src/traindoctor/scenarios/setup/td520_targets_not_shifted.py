"""TD520: a small causal transformer language model trained with its input ids as targets at
the same positions (Project-MONAI/GenerativeModels#314: "training them to predict token N,
given tokens 0-N inclusive"): the loss falls towards 0 as the model learns to copy.

`bug=True` passes the ids unshifted; the healthy twin `targets_shifted` predicts ids[:, 1:]
from logits[:, :-1]."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, line_in, log

VOCAB, T = 16, 12


class TinyCausalLM(nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(T, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, ids):
        n = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(n))
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        return self.head(self.blocks(h, mask=mask, is_causal=True))


def train(steps: int = 40, watch=None, bug: bool = False):
    g = torch.Generator().manual_seed(20)
    torch.manual_seed(20)
    data = torch.randint(0, VOCAB, (512, T), generator=g)
    model = TinyCausalLM()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    for step in range(steps):
        ids = data[(step * 32) % 512 : (step * 32) % 512 + 32]
        optimizer.zero_grad(set_to_none=True)
        logits = model(ids)
        if bug:
            loss = F.cross_entropy(logits.transpose(1, 2), ids)  # LOSS
        else:
            loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:])
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="targets_not_shifted",
        bug="a causal LM's cross-entropy given the input ids at the same positions",
        train=partial(train, bug=True),
        expect=("TD520",),
        top="TD520",
        where={"source": line_in(__file__, "# LOSS")},
        twin="targets_shifted",
        steps=40,
    ),
    Scenario(name="targets_shifted", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    train(bug=True)

"""TD518: a sequence model trained on targets padded with the pad token's id (0) while the
cross-entropy ignores its default -100: the padded positions, about half of the targets, are
trained as tokens to predict.

`bug=True` leaves ignore_index at its default; the healthy twin `padding_ignored` passes the
pad id."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, line_in, log

PAD, VOCAB, T = 0, 24, 16


def sequences(n: int = 256, seed: int = 17):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, T - 1, (n,), generator=g)
    first = torch.randint(2, VOCAB, (n,), generator=g)
    seqs = torch.full((n, T), PAD, dtype=torch.long)
    for i in range(n):
        length = int(lengths[i])
        seqs[i, :length] = (first[i] + torch.arange(length)) % (VOCAB - 2) + 2
        seqs[i, length] = 1  # end of sequence
    return seqs


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.rnn = nn.GRU(32, 32, batch_first=True)
        self.out = nn.Linear(32, VOCAB)

    def forward(self, x):
        return self.out(self.rnn(self.embed(x))[0])


def train(steps: int = 40, watch=None, bug: bool = False):
    seqs = sequences()
    torch.manual_seed(17)
    model = Decoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    ignore = -100 if bug else PAD
    for step in range(steps):
        batch = seqs[(step * 32) % 256 : (step * 32) % 256 + 32]
        optimizer.zero_grad(set_to_none=True)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], ignore_index=ignore)  # LOSS
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="padding_in_loss",
        bug="targets padded with 0, cross_entropy's ignore_index left at -100",
        train=partial(train, bug=True),
        expect=("TD518",),
        top="TD518",
        where={"source": line_in(__file__, "# LOSS")},
        twin="padding_ignored",
        steps=40,
    ),
    Scenario(name="padding_ignored", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    train(bug=True)

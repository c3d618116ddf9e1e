"""TD524: a character language model trained without its causal mask (pytorch/tutorials#2478:
`nn.TransformerEncoder` called without `mask=`): every position attends to the next one,
whose token is its target, so the training loss falls fast while nothing is learned that a
generation could use.

`bug=True` calls the encoder without a mask; the healthy twin `char_lm_causal_mask` passes
`nn.Transformer.generate_square_subsequent_mask`."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log

VOCAB, SEQ = 16, 12


class _CharLM(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.embed = nn.Embedding(VOCAB, 32)
        self.pos = nn.Parameter(torch.randn(SEQ, 32) * 0.02)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, VOCAB)

    def forward(self, ids):
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        mask = None
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.head(self.encoder(x, mask=mask, is_causal=self.causal))


def train(steps: int = 30, watch=None, bug: bool = False):
    g = torch.Generator().manual_seed(24)
    torch.manual_seed(24)
    text = torch.randint(0, VOCAB, (4096,), generator=g)
    model = _CharLM(causal=not bug)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    for _ in range(steps):
        starts = torch.randint(0, len(text) - SEQ - 1, (16,), generator=g)
        batch = torch.stack([text[s : s + SEQ + 1] for s in starts.tolist()])
        x, y = batch[:, :-1], batch[:, 1:]
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="char_lm_without_causal_mask",
        bug="a transformer language model trained without its causal mask",
        train=partial(train, bug=True),
        expect=("TD524",),
        top="TD524",
        twin="char_lm_causal_mask",
        steps=30,
    ),
    Scenario(name="char_lm_causal_mask", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train(bug=True)

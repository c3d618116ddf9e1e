"""A character model with a hand-written GRU cell and a learned start state, zeros at init
(karpathy/makemore's `--type gru`), that computes its own loss in forward. Shared by the
TD301 pair: the zero start state makes `r * h` and `(1 - z) * h` pass exactly 0 to the gates at
t=0 until the state's first update (not a block); a probability clamped before its log is."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import log


class GRUCell(nn.Module):
    def __init__(self, n_in: int, n_hidden: int) -> None:
        super().__init__()
        self.xh_to_z = nn.Linear(n_in + n_hidden, n_hidden)
        self.xh_to_r = nn.Linear(n_in + n_hidden, n_hidden)
        self.xh_to_hbar = nn.Linear(n_in + n_hidden, n_hidden)

    def forward(self, xt: torch.Tensor, hprev: torch.Tensor) -> torch.Tensor:
        xh = torch.cat([xt, hprev], dim=1)
        r = torch.sigmoid(self.xh_to_r(xh))
        hbar = torch.tanh(self.xh_to_hbar(torch.cat([xt, r * hprev], dim=1)))
        z = torch.sigmoid(self.xh_to_z(xh))
        return (1 - z) * hprev + z * hbar


class CharGRU(nn.Module):
    def __init__(self, vocab: int, n_embd: int = 16, n_hidden: int = 32, clamp: bool = False):
        super().__init__()
        self.start = nn.Parameter(torch.zeros(1, n_hidden))  # learned start state, zeros at init
        self.wte = nn.Embedding(vocab, n_embd)
        self.cell = GRUCell(n_embd, n_hidden)
        self.lm_head = nn.Linear(n_hidden, vocab)
        self.clamp = clamp

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        emb = self.wte(idx)
        h = self.start.expand(b, -1)
        hiddens = []
        for i in range(t):
            h = self.cell(emb[:, i], h)
            hiddens.append(h)
        logits = self.lm_head(torch.stack(hiddens, 1))
        if not self.clamp:
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        p = logits.softmax(-1).gather(-1, targets.unsqueeze(-1))
        return -p.clamp(min=0.05).log().mean()  # BUG: a floor above 1/vocab: gradient 0


def train(steps: int = 40, watch=None, clamp: bool = False):
    g = torch.Generator().manual_seed(0)
    vocab, length = 27, 8
    # Sequences that count up modulo the vocabulary from a random first letter: learnable.
    first = torch.randint(1, vocab, (512, 1), generator=g)
    seqs = (first + torch.arange(length + 1)) % vocab
    torch.manual_seed(0)
    model = CharGRU(vocab, clamp=clamp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    doc = watch(model, optimizer) if watch else None
    for _ in range(steps):
        ix = torch.randint(0, len(seqs), (32,), generator=g)
        loss = model(seqs[ix, :-1], seqs[ix, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model

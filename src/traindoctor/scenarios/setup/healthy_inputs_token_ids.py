"""Healthy control for TD510: integer token ids (0..999) into an embedding are indices, not
features: their scale is not judged."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log


class BagOfEmbeddings(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(1))


def train(steps: int = 30, watch=None):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 1000, (256, 12), generator=g)
    y = ids[:, 0] % 4  # the class is carried by the first token
    model = BagOfEmbeddings()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    for _ in range(steps):
        idx = torch.randint(0, len(ids), (32,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(ids[idx]), y[idx])
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIO = Scenario(name="inputs_token_ids", bug="", train=train, steps=30)

if __name__ == "__main__":
    train()

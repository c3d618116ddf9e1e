"""TD603: a model with an auxiliary head its forward never calls, wrapped with
DDP(find_unused_parameters=True) to make DDP's "parameters that were not used in producing
loss" error go away: the head never gets a gradient on any rank, and every step pays DDP's
search of the graph for unused parameters. The healthy twin uses the head (an auxiliary loss)."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from .._base import Scenario, batches, classification_data, log
from ._job import main, rank


class Net(nn.Module):
    def __init__(self, use_aux: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)
        self.aux_head = nn.Linear(32, 4)
        self.use_aux = use_aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        out = self.head(h)
        if self.use_aux:  # BUG (use_aux=False): aux_head is never called
            out = out + 0.3 * self.aux_head(h)
        return out


def train(steps: int = 16, watch=None, bug: bool = False):
    r = rank()
    torch.manual_seed(0)
    # BUG: find_unused_parameters=True silences DDP's error about aux_head
    model = DDP(Net(use_aux=not bug), find_unused_parameters=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, optimizer) if watch else None
    x, y = classification_data(n=512, seed=0)
    data = batches(x[r::2], y[r::2], 32, seed=r)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="ddp_unused_head_find_unused",
        bug="an auxiliary head never called, hidden by DDP(find_unused_parameters=True)",
        train=partial(train, bug=True),
        expect=("TD603",),
        top="TD603",
        where={"module": "module.aux_head"},
        twin="ddp_all_params_used",
        steps=16,
    ),
    Scenario(name="ddp_all_params_used", bug="", train=train, steps=16),
)

if __name__ == "__main__":
    main(SCENARIOS)

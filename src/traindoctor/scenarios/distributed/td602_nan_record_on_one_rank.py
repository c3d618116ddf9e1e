"""TD602: one record of rank 1's shard holds a NaN feature; at step 10 rank 1's loss is NaN, and
DDP's gradient all-reduce turns every replica NaN (rank 0's loss is NaN from step 11). The
healthy twin: the same job with clean records."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from .._base import Scenario, log
from ._job import main, rank


def train(steps: int = 16, watch=None, bug: bool = False):
    r = rank()
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, optimizer) if watch else None
    w = torch.randn(8, 1, generator=torch.Generator().manual_seed(7))  # the task: y = x @ w
    g = torch.Generator().manual_seed(100 + r)  # each rank its own records
    for step in range(1, steps + 1):
        x = torch.randn(16, 8, generator=g)
        y = x @ w + 0.1 * torch.randn(16, 1, generator=g)
        if bug and r == 1 and step == 10:
            x[3, 5] = float("nan")  # BUG: a corrupt record in rank 1's shard
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="ddp_nan_record_on_rank1",
        bug="a NaN feature in one record of rank 1's shard at step 10, spread by the all-reduce",
        train=partial(train, bug=True),
        expect=("TD602",),
        top="TD602",
        twin="ddp_clean_records",
        steps=16,
    ),
    Scenario(name="ddp_clean_records", bug="", train=train, steps=16),
)

if __name__ == "__main__":
    main(SCENARIOS)

"""TD604: every rank builds the same DataLoader(shuffle=True) with the same seed and no
DistributedSampler: both ranks train on the same batches, step after step. The healthy twin
shards the data set with a DistributedSampler (and calls set_epoch)."""

from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .._base import Scenario, line_in, log
from ._data import dataset, net
from ._job import main


def train(steps: int = 16, watch=None, bug: bool = False):
    torch.manual_seed(0)
    data = dataset()
    sampler = None if bug else DistributedSampler(data, shuffle=True, seed=0)
    g = torch.Generator().manual_seed(0)
    # BUG (bug=True): no sampler, the same shuffling seed on every rank
    loader = DataLoader(data, batch_size=32, shuffle=sampler is None, sampler=sampler, generator=g)
    model = DDP(net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, optimizer) if watch else None
    done, epoch = 0, 0
    while done < steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            log(doc, loss=loss)
            done += 1
            if done == steps:
                break
        epoch += 1
    return model


SCENARIOS = (
    Scenario(
        name="ddp_data_not_sharded",
        bug="DataLoader(shuffle=True) with the same seed on every rank, no DistributedSampler",
        train=partial(train, bug=True),
        expect=("TD604",),
        top="TD604",
        where={"source": line_in(__file__, "loader = DataLoader(data")},
        twin="ddp_data_sharded",
        steps=16,
    ),
    Scenario(name="ddp_data_sharded", bug="", train=train, steps=16),
)

if __name__ == "__main__":
    main(SCENARIOS)

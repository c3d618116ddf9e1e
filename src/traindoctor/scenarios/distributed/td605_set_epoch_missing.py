"""TD605: a DistributedSampler(shuffle=True) whose set_epoch is never called: each of the four
epochs replays the first one's order (pytorch/pytorch#31771). The healthy twin calls
sampler.set_epoch(epoch) before each epoch."""

from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .._base import Scenario, log
from ._data import dataset, net
from ._job import main


def train(steps: int = 16, watch=None, bug: bool = False):
    torch.manual_seed(0)
    data = dataset()
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=32, sampler=sampler)  # 4 batches a rank an epoch
    model = DDP(net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, optimizer) if watch else None
    done, epoch = 0, 0
    while done < steps:
        if not bug:
            sampler.set_epoch(epoch)  # BUG (bug=True): never called
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
        name="ddp_sampler_epoch_not_set",
        bug="DistributedSampler(shuffle=True) without set_epoch: every epoch in the same order",
        train=partial(train, bug=True),
        expect=("TD605",),
        top="TD605",
        twin="ddp_sampler_epoch_set",
        steps=16,
    ),
    Scenario(name="ddp_sampler_epoch_set", bug="", train=train, steps=16),
)

if __name__ == "__main__":
    main(SCENARIOS)

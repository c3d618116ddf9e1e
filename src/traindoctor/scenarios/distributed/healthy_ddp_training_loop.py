"""A healthy DDP training loop with everything the cross-rank rules must not mistake for a bug:
BatchNorm (per-rank running statistics, broadcast at each synced forward), a validation through
the DDP wrapper every 4 steps (under no_grad: the next training forward skips one buffer
broadcast), gradient accumulation with no_sync(), AdamW, and a DistributedSampler whose
set_epoch is called (each rank its own shard, a new order each epoch)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .._base import Scenario, log, validating
from ._data import dataset
from ._job import main

ACCUMULATE = 2


def train(steps: int = 16, watch=None):
    torch.manual_seed(0)
    data = dataset(n=512)
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=16, sampler=sampler)
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    model = DDP(net)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    xv, yv = data.tensors[0][:64], data.tensors[1][:64]
    done, epoch, micro = 0, 0, 0
    while done < steps:
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            micro += 1
            last = micro % ACCUMULATE == 0
            if last:
                loss = F.cross_entropy(model(xb), yb) / ACCUMULATE
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                log(doc, loss=loss * ACCUMULATE)
                done += 1
                if done % 4 == 0:
                    with validating(doc, model):
                        log(doc, loss=F.cross_entropy(model(xv), yv))
                if done == steps:
                    break
            else:
                with model.no_sync():
                    (F.cross_entropy(model(xb), yb) / ACCUMULATE).backward()
        epoch += 1
    return model


SCENARIO = Scenario(name="ddp_training_loop_healthy", bug="", train=train, steps=16)

if __name__ == "__main__":
    main((SCENARIO,))

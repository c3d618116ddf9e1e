"""TD609: each rank validates its DistributedSampler shard and logs that shard's mean loss and
accuracy, never all-reduced, so rank 0's logged validation loss is measured on half the
validation set (Lightning-AI/litgpt#599, cybertronai/transformer-xl#14). The healthy twin
all-reduces the sums and counts before dividing: every rank logs the whole set's value."""

from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .._base import Scenario, log, validating
from ._data import dataset, net
from ._job import main


def train(steps: int = 8, watch=None, bug: bool = False):
    torch.manual_seed(0)
    data, val = dataset(), dataset(64)
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=32, sampler=sampler)
    val_loader = DataLoader(val, batch_size=16, sampler=DistributedSampler(val, shuffle=False))
    model = DDP(net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, optimizer) if watch else None
    done, epoch = 0, 0
    while done < steps:
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            log(doc, loss=loss)
            done += 1
            if done % 4 == 0:
                validate(model, val_loader, doc, bug)
            if done == steps:
                break
        epoch += 1
    return model


def validate(model, val_loader, doc, bug: bool) -> None:
    with validating(doc, model):
        total = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, samples
        for xb, yb in val_loader:
            out = model(xb)
            total[0] += F.cross_entropy(out, yb, reduction="sum").double()
            total[1] += (out.argmax(1) == yb).sum()
            total[2] += len(yb)
        if not bug:
            dist.all_reduce(total)  # BUG (bug=True): this rank's shard only
        log(doc, loss=(total[0] / total[2]).item(), val_acc=(total[1] / total[2]).item())


SCENARIOS = (
    Scenario(
        name="ddp_val_loss_on_own_shard",
        bug="validation loss averaged on each rank's shard, never all-reduced",
        train=partial(train, bug=True),
        expect=("TD609",),
        top="TD609",
        twin="ddp_val_loss_all_reduced",
        steps=8,
    ),
    Scenario(name="ddp_val_loss_all_reduced", bug="", train=train, steps=8),
)

if __name__ == "__main__":
    main(SCENARIOS)

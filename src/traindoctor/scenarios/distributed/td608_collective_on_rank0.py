"""TD608: after training, rank 0 alone evaluates and averages its accuracy with
dist.all_reduce (the "validate under `if rank == 0:`" pattern of horovod/horovod#159): rank 1
never joins, finishes and leaves; rank 0 waits in the all_reduce until gloo fails it (the job is
launched with a 10 s process-group timeout so it ends). The healthy twin evaluates on every rank
and every rank joins the all_reduce."""

import contextlib
from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from .._base import Scenario, batches, classification_data, line_in, log
from ._data import net
from ._job import main, rank

TIMEOUT_S = 10


def train(steps: int = 8, watch=None, bug: bool = False):
    r = rank()
    torch.manual_seed(0)
    model = DDP(net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = classification_data(n=512, seed=0)
    data = batches(x[r::2], y[r::2], 32, seed=r)
    with watch(model, optimizer) if watch else contextlib.nullcontext() as doc:
        for _ in range(steps):
            xb, yb = next(data)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            log(doc, loss=loss)
        xv, yv = x[256 + r :: 2], y[256 + r :: 2]  # each rank its validation shard
        if not bug or r == 0:
            with torch.no_grad():
                correct = (model.module(xv).argmax(1) == yv).sum().float()
            dist.all_reduce(correct)  # BUG (bug=True): called on rank 0 only
    return model


SCENARIOS = (
    Scenario(
        name="ddp_all_reduce_on_rank0_only",
        bug="dist.all_reduce of the validation accuracy under `if rank == 0:`: the job hangs",
        train=partial(train, bug=True),
        expect=("TD608",),
        top="TD608",
        where={"source": line_in(__file__, "dist.all_reduce(correct)")},
        twin="ddp_all_reduce_on_every_rank",
        steps=8,
    ),
    Scenario(name="ddp_all_reduce_on_every_rank", bug="", train=train, steps=8),
)

if __name__ == "__main__":
    dist.init_process_group("gloo", timeout=timedelta(seconds=TIMEOUT_S))
    main(SCENARIOS)

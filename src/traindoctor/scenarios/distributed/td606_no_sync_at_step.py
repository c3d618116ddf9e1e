"""TD606: gradient accumulation over 2 micro-batches with DDP's no_sync() turned the wrong way
(modelscope/FunASR#3472's inverted condition): the first micro-batch is all-reduced and the last
one, whose backward comes right before optimizer.step(), runs inside no_sync(), so each rank
steps on gradients partly its own and the replicas drift. The healthy twin puts the micro-batches
before the last inside no_sync(); a second twin accumulates without no_sync() at all (correct,
every micro-batch all-reduced: info at most)."""

import contextlib
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from .._base import Scenario, batches, classification_data, line_in, log
from ._data import net
from ._job import main, rank

ACCUMULATE = 2


def train(steps: int = 12, watch=None, bug: str | None = None):
    r = rank()
    torch.manual_seed(0)
    model = DDP(net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, optimizer) if watch else None
    x, y = classification_data(n=512, seed=0)
    data = batches(x[r::2], y[r::2], 16, seed=r)  # each rank its own half
    done, micro = 0, 0
    while done < steps:
        xb, yb = next(data)
        micro += 1
        last = micro % ACCUMULATE == 0
        if bug == "inverted":
            ctx = model.no_sync() if last else contextlib.nullcontext()  # BUG: inverted
        elif bug == "always_sync":
            ctx = contextlib.nullcontext()  # every micro-batch all-reduced: only a cost
        else:
            ctx = contextlib.nullcontext() if last else model.no_sync()
        with ctx:
            loss = F.cross_entropy(model(xb), yb) / ACCUMULATE
            loss.backward()
        if last:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            log(doc, loss=loss * ACCUMULATE)
            done += 1
    return model


SCENARIOS = (
    Scenario(
        name="ddp_no_sync_on_the_step_micro_batch",
        bug="no_sync() around the last micro-batch before optimizer.step(): local gradients",
        train=partial(train, bug="inverted"),
        expect=("TD606",),
        top="TD606",
        where={"source": line_in(__file__, "loss = F.cross_entropy(model(xb), yb)")},
        twin="ddp_no_sync_before_the_last_micro_batch",
        steps=12,
    ),
    Scenario(name="ddp_no_sync_before_the_last_micro_batch", bug="", train=train, steps=12),
    Scenario(
        name="ddp_accumulation_without_no_sync",
        bug="",
        train=partial(train, bug="always_sync"),
        steps=12,
    ),
)

if __name__ == "__main__":
    main(SCENARIOS)

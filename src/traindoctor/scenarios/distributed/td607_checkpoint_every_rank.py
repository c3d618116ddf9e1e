"""TD607: every rank saves the checkpoint to the same file every 4 steps (bytedance/ibot#15:
"every processor would save a checkpoint"): the ranks' writes race on one path. The healthy
twin saves on rank 0 only and each rank its own optimizer state to its own path (different
files: fine)."""

import os
import shutil
import tempfile
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from .._base import Scenario, batches, classification_data, line_in, log
from ._data import net
from ._job import main, rank


def _folder() -> str:
    """One folder per job, the same for every rank (torchrun's rendezvous id), in /tmp."""
    job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "job")
    folder = os.path.join(tempfile.gettempdir(), f"td607-{job}")
    os.makedirs(folder, exist_ok=True)
    return folder


def train(steps: int = 12, watch=None, bug: bool = False):
    r = rank()
    torch.manual_seed(0)
    model = DDP(net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    x, y = classification_data(n=512, seed=0)
    data = batches(x[r::2], y[r::2], 32, seed=r)
    folder = _folder()
    for step in range(1, steps + 1):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if step % 4 == 0:
            path = os.path.join(folder, "td607_checkpoint.pt")
            if bug:
                torch.save(model.module.state_dict(), path)  # BUG: on every rank, one path
            else:
                if r == 0:
                    torch.save(model.module.state_dict(), path)
                torch.save(optimizer.state_dict(), os.path.join(folder, f"td607_optim{r}.pt"))
            dist.barrier()
    if r == 0:
        shutil.rmtree(folder, ignore_errors=True)
    return model


SCENARIOS = (
    Scenario(
        name="ddp_checkpoint_saved_by_every_rank",
        bug="torch.save(state_dict, one path) on every rank every 4 steps",
        train=partial(train, bug=True),
        expect=("TD607",),
        top="TD607",
        where={"source": line_in(__file__, "torch.save(model.module.state_dict(), path)  #")},
        twin="ddp_checkpoint_saved_by_rank0",
        steps=12,
    ),
    Scenario(name="ddp_checkpoint_saved_by_rank0", bug="", train=train, steps=12),
)

if __name__ == "__main__":
    main(SCENARIOS)

"""TD601: the replicas of a DDP model drift apart. Three real ways: a forward that bypasses the
wrapper every third step (`model.module(x)`: that step's gradients are never all-reduced), a
parameter registered after wrapping (DDP neither broadcasts nor reduces it), and
`broadcast_buffers=False` with BatchNorm (each rank keeps its own running statistics). The
healthy twin: the same BatchNorm model through its wrapper, every rank on its own data."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from .._base import Scenario, batches, classification_data, line_in, log
from ._job import main, rank


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(x))
        late = getattr(self, "late_bias", None)
        return out if late is None else out + late


def train(steps: int = 24, watch=None, bug: str | None = None):
    r = rank()
    torch.manual_seed(0)
    net = Net()
    # BUG (no_broadcast_buffers): each rank keeps its own BatchNorm statistics
    kwargs = {"broadcast_buffers": False} if bug == "no_broadcast_buffers" else {}
    model = DDP(net, **kwargs)
    if bug == "late_param":
        net.late_bias = nn.Parameter(torch.zeros(4))  # BUG: registered after DDP wrapped it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, optimizer) if watch else None
    x, y = classification_data(n=512, seed=0)
    data = batches(x[r::2], y[r::2], 32, seed=r)  # each rank its own half
    for step in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        bypass = bug == "bypass" and step % 3 == 2
        out = model.module(xb) if bypass else model(xb)  # BUG (bypass): no gradient all-reduce
        loss = F.cross_entropy(out, yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="ddp_forward_bypasses_wrapper",
        bug="model.module(x) every third step: that step's gradients are not all-reduced",
        train=partial(train, bug="bypass"),
        expect=("TD601",),
        top="TD601",
        where={"source": line_in(__file__, "out = model.module(xb) if bypass")},
        twin="ddp_in_sync",
        steps=24,
    ),
    Scenario(
        name="ddp_param_registered_after_wrapping",
        bug="a parameter added to the module after DDP wrapped it: never synchronized",
        train=partial(train, bug="late_param"),
        expect=("TD601",),
        top="TD601",
        where={"params_prefix": "module.late_bias"},
        twin="ddp_in_sync",
        steps=24,
    ),
    Scenario(
        name="ddp_broadcast_buffers_off",
        bug="DDP(broadcast_buffers=False) with BatchNorm: each rank's running stats drift",
        train=partial(train, bug="no_broadcast_buffers"),
        expect=("TD601",),
        top="TD601",
        twin="ddp_in_sync",
        steps=24,
    ),
    Scenario(name="ddp_in_sync", bug="", train=train, steps=24),
)

if __name__ == "__main__":
    main(SCENARIOS)

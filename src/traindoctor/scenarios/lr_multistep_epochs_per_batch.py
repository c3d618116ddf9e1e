"""TD503: MultiStepLR(milestones=[2, 3]) sized in epochs but stepped after every batch: the
learning rate is 100x smaller from the third batch on, for the rest of the run."""

from ._base import Scenario
from ._lr_sched import train as _train


def train(steps: int = 64, watch=None):
    return _train(steps=steps, watch=watch, kind="multistep_epochs")


SCENARIO = Scenario(
    name="lr_multistep_epochs_per_batch",
    bug="MultiStepLR(milestones=[2, 3]) meant per epoch, stepped per batch: lr /100 by batch 3",
    train=train,
    expect=("TD503",),
    top="TD503",
    where={"source": "_lr_sched.py"},
    twin="lr_onecycle_per_batch",
    steps=64,
)

if __name__ == "__main__":
    train()

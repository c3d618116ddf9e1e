"""TD503: CosineAnnealingLR(T_max=epochs) stepped after every batch: the cosine ends after 4
batches and restarts, so the learning rate cycles every 8 batches instead of decaying once."""

from ._base import Scenario
from ._lr_sched import train as _train


def train(steps: int = 64, watch=None):
    return _train(steps=steps, watch=watch, kind="cosine_epochs")


SCENARIO = Scenario(
    name="lr_cosine_epochs_per_batch",
    bug="CosineAnnealingLR(T_max=epochs) stepped per batch: the lr cycles every 2*T_max batches",
    train=train,
    expect=("TD503",),
    top="TD503",
    where={"source": "_lr_sched.py"},
    twin="lr_warmup_cosine_per_batch",
    steps=64,
)

if __name__ == "__main__":
    train()

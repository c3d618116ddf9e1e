"""Healthy twin of lr_cosine_epochs_per_batch: a linear warmup then a cosine sized in batches
(SequentialLR), stepped per batch as it is meant to be."""

from ._base import Scenario
from ._lr_sched import train as _train


def train(steps: int = 64, watch=None):
    return _train(steps=steps, watch=watch, kind="warmup_cosine")


SCENARIO = Scenario(name="lr_warmup_cosine_per_batch", bug="", train=train, steps=64)

if __name__ == "__main__":
    train()

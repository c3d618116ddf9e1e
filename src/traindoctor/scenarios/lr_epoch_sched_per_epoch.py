"""Healthy twin of lr_epoch_sched_per_micro_batch: the same 4-step accumulation, the
ExponentialLR stepped once per epoch as it is sized."""

from ._base import Scenario
from .lr_epoch_sched_per_micro_batch import train as _train


def train(steps: int = 48, watch=None):
    return _train(steps=steps, watch=watch, per_epoch=True)


SCENARIO = Scenario(name="lr_epoch_sched_per_epoch", bug="", train=train, steps=48)

if __name__ == "__main__":
    train()

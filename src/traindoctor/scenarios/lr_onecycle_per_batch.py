"""Healthy twin of lr_multistep_epochs_per_batch: OneCycleLR sized in batches, stepped per
batch as it is meant to be."""

from ._base import Scenario
from ._lr_sched import train as _train


def train(steps: int = 64, watch=None):
    return _train(steps=steps, watch=watch, kind="onecycle")


SCENARIO = Scenario(name="lr_onecycle_per_batch", bug="", train=train, steps=64)

if __name__ == "__main__":
    train()

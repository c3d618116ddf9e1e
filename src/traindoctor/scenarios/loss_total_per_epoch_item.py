"""Healthy twin of loss_total_per_epoch: `train_loss += loss.item()`."""

from ._base import Scenario
from .loss_total_per_epoch import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, item=True)


SCENARIO = Scenario(name="loss_total_per_epoch_item", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

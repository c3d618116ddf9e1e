"""Healthy twin of nan_lr_explodes: the same MLP with a sane learning rate."""

from ._base import Scenario
from .nan_lr_explodes import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, lr=0.05)


SCENARIO = Scenario(name="nan_lr_sane", bug="", train=train, steps=30)

if __name__ == "__main__":
    train()

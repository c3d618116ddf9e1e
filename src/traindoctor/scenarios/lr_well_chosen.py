"""Healthy twin of lr_too_large: the same model and data with lr below 2/λmax."""

from ._base import Scenario
from .lr_too_large import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, lr=0.2)


SCENARIO = Scenario(name="lr_well_chosen", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

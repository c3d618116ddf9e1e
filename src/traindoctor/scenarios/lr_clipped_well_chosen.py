"""Healthy twin of lr_too_high_clipped: the same model, data and clipping with AdamW lr=3e-3."""

from ._base import Scenario
from .lr_too_high_clipped import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, lr=3e-3)


SCENARIO = Scenario(name="lr_clipped_well_chosen", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

"""Seed 000, fixed: the validator fuses a deep copy under inference_mode and restores the mode."""

from ._base import Scenario
from ._seed000 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug=None)


SCENARIO = Scenario(name="seed000_validator_copies", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

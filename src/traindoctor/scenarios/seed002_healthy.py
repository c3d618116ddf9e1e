"""Seed 002, fixed: accumulation scaling, step/scheduler/EMA at the right level."""

from ._base import Scenario
from ._seed002 import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, bug=None)


SCENARIO = Scenario(name="seed002_healthy", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

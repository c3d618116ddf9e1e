"""Healthy twin of labels_one_based: 0-based labels and 4 outputs."""

from ._base import Scenario
from .labels_one_based import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, healthy=True)


SCENARIO = Scenario(name="labels_zero_based", bug="", train=train, steps=30)

if __name__ == "__main__":
    train()

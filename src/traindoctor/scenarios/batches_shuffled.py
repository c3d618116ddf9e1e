"""Healthy twin of batches_class_sorted: the same class-sorted dataset, shuffled by the loader."""

from ._base import Scenario
from .batches_class_sorted import train as _train


def train(steps: int = 48, watch=None):
    return _train(steps=steps, watch=watch, shuffle=True)


SCENARIO = Scenario(name="batches_shuffled", bug="", train=train, steps=48)

if __name__ == "__main__":
    train()

"""Healthy twin of inputs_raw_units: each feature standardized with the training set's
mean and std."""

from ._base import Scenario
from .inputs_raw_units import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, normalize=True)


SCENARIO = Scenario(name="inputs_standardized", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

"""Healthy twin of tanh_inputs_unscaled: the same net on standardized inputs."""

from ._base import Scenario
from .tanh_inputs_unscaled import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, scale=1.0)


SCENARIO = Scenario(name="tanh_inputs_scaled", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

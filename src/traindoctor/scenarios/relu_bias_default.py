"""Healthy twin of relu_bias_shifted: the same MLP with PyTorch's default bias init."""

from ._base import Scenario
from .relu_bias_shifted import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, bias_shift=0.0)


SCENARIO = Scenario(name="relu_bias_default", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

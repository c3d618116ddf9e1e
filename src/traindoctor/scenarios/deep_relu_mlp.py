"""Healthy twin of deep_sigmoid_mlp: the same depth with ReLU and Kaiming init."""

from ._base import Scenario
from .deep_sigmoid_mlp import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, act="relu")


SCENARIO = Scenario(name="deep_relu_mlp", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

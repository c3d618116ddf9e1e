"""Healthy twin of weight_decay_on_norms: the same run with weight decay on the weight matrices
only (norm gains and biases in a group with weight_decay=0)."""

from ._base import Scenario
from ._weight_decay import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, split=True)


SCENARIO = Scenario(name="weight_decay_split", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

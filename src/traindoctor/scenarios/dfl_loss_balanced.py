"""Healthy twin of dfl_loss_dominates: DFL averaged over the sides and weighted 0.25."""

from ._base import Scenario
from .dfl_loss_dominates import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, balanced=True)


SCENARIO = Scenario(name="dfl_loss_balanced", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

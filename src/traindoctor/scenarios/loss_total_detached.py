"""Healthy twin of loss_total_keeps_graph: the running total adds `loss.detach()`."""

from ._base import Scenario
from .loss_total_keeps_graph import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, detach=True)


SCENARIO = Scenario(name="loss_total_detached", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

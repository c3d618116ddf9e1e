"""Seed 001, healthy: the same padded-polygon GIoU loss with its 0/1 mask, nan_to_num calls and
clamp(-1, 1), none of which blocks the gradient (the clamp is never active)."""

from ._base import Scenario
from ._seed001 import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, bug=None)


SCENARIO = Scenario(
    name="seed001_healthy",
    bug="",
    train=train,
    expect=(),
    top=None,
    where={},
    twin=None,
    steps=30,
)

if __name__ == "__main__":
    train()

"""Seed 001: the polygon GIoU part is computed from pred.detach(): it trains nothing"""

from ._base import Scenario
from ._seed001 import line_of
from ._seed001 import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, bug="detached")


SCENARIO = Scenario(
    name="seed001_detached",
    bug="Seed 001: the polygon GIoU part is computed from pred.detach(): it trains nothing",
    train=train,
    expect=("TD302",),
    top="TD302",
    where={"source": line_of("loss = box + poly")},
    twin="seed001_healthy",
    steps=30,
)

if __name__ == "__main__":
    train()

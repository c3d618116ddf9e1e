"""Seed 001: giou1d.clamp(-1, 1) saturates for most axes (mixed units): zero gradient"""

from ._base import Scenario
from ._seed001 import line_of
from ._seed001 import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, bug="clamp_saturates")


SCENARIO = Scenario(
    name="seed001_clamp_saturates",
    bug="Seed 001: giou1d.clamp(-1, 1) saturates for most axes (mixed units): zero gradient",
    train=train,
    expect=("TD301",),
    top="TD301",
    where={"source": line_of("giou1d = giou1d.clamp(-1.0, 1.0)")},
    twin="seed001_healthy",
    steps=30,
)

if __name__ == "__main__":
    train()

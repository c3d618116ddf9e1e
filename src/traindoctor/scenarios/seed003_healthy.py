"""Seed 003, fixed: unscale_ before clip and the NaN check, scaler.step, DFL with eps."""

from ._base import Scenario
from ._seed003 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug=None)


SCENARIO = Scenario(
    name="seed003_healthy",
    bug="",
    train=train,
    expect=(),
    top=None,
    where={},
    twin=None,
    steps=40,
)

if __name__ == "__main__":
    train()

"""Seed 003 with the report's DFL clamps (probabilities at 1e-6, loss at 15) and a normal init:
the clamps are never active, so they cost nothing and traindoctor stays silent."""

from ._base import Scenario
from ._seed003 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="dfl_clamp_inactive")


SCENARIO = Scenario(
    name="seed003_dfl_clamp_inactive",
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

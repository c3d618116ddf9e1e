"""Seed 002 (a): `loss = loss / accum` inside a debug-only block: first batch only."""

from ._base import Scenario
from ._seed002 import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, bug="debug_scaling")


SCENARIO = Scenario(
    name="seed002_debug_scaling",
    bug="loss / accum only inside the first-batch debug block (seed 002a)",
    train=train,
    expect=("TD109",),
    top="TD109",
    where={"source": "_seed002.py"},
    twin="seed002_healthy",
    steps=30,
)

if __name__ == "__main__":
    train()

"""Seed 002 (b): optimizer.step()/scheduler/EMA indented into the first-batch debug block."""

from ._base import Scenario
from ._seed002 import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, bug="step_indent")


SCENARIO = Scenario(
    name="seed002_step_indent",
    bug="optimizer.step() indented into the first-batch debug block (seed 002b)",
    train=train,
    expect=("TD105",),
    top="TD105",
    where={"source": "_seed002.py"},
    twin="seed002_healthy",
    steps=30,
)

if __name__ == "__main__":
    train()

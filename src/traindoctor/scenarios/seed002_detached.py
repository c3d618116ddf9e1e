"""Seed 002 (c): the trained loss is computed from detached outputs (error silenced)."""

from ._base import Scenario
from ._seed002 import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, bug="detached")


SCENARIO = Scenario(
    name="seed002_detached",
    bug="loss computed from pred.detach(), then loss.requires_grad_(True) (seed 002c)",
    train=train,
    expect=("TD101",),
    top="TD101",
    where={"source": "_seed002.py"},
    twin="seed002_healthy",
    steps=30,
)

if __name__ == "__main__":
    train()

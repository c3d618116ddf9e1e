"""Seed 003 variant: optimizer.step() bypasses scaler.step(), applying scaled gradients."""

from ._base import Scenario
from ._seed003 import line_of
from ._seed003 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="step_bypass")


SCENARIO = Scenario(
    name="seed003_step_bypass",
    bug="optimizer.step() instead of scaler.step(optimizer) under a GradScaler (seed 003)",
    train=train,
    expect=("TD204",),
    top="TD204",
    where={"source": line_of("BUG: bypasses scaler.step()")},
    twin="seed003_healthy",
    steps=40,
)

if __name__ == "__main__":
    train()

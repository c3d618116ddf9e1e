"""Seed 003 variant: optimizer.step() called directly, bypassing scaler.step(optimizer)."""

from ._amp import line_of
from ._amp import train as _train
from ._base import Scenario


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="step_bypass")


SCENARIO = Scenario(
    name="amp_step_bypasses_scaler",
    bug="scaler.scale(loss).backward() then optimizer.step(): gradients applied still scaled",
    train=train,
    expect=("TD204",),
    top="TD204",
    where={"source": line_of("BUG: optimizer.step() bypasses")},
    twin="amp_healthy",
    steps=40,
)

if __name__ == "__main__":
    train()

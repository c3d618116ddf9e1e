"""Healthy twin of the GradScaler scenarios: scale(loss).backward(), unscale_, clip,
scaler.step, scaler.update, under bfloat16 autocast on CPU."""

from ._amp import train as _train
from ._base import Scenario


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug=None)


SCENARIO = Scenario(name="amp_healthy", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

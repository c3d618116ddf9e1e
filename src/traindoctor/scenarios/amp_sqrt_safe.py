"""Healthy twin of amp_scaler_collapse: the gate takes the sqrt of a clamped input, so its
gradient is finite; the GradScaler (growth_interval=1) never skips."""

from ._amp import train as _train
from ._base import Scenario


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="safe_gate")


SCENARIO = Scenario(name="amp_sqrt_safe", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

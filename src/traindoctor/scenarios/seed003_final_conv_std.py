"""Seed 003 variant: the box head's final 1x1 conv starts with weights far too large."""

from ._base import Scenario
from ._seed003 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="final_conv_std")


SCENARIO = Scenario(
    name="seed003_final_conv_std",
    bug="final box-head conv initialized with std 10: outputs start far larger than inputs (seed 003)",
    train=train,
    expect=("TD209",),
    top="TD209",
    where={"module": "cv2.2", "params_prefix": "cv2.2."},
    twin="seed003_healthy",
    steps=40,
)

if __name__ == "__main__":
    train()

"""Seed 003's critical bug: clip_grad_norm_ and the user's NaN check on still-scaled gradients."""

from ._base import Scenario
from ._seed003 import line_of
from ._seed003 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="clip_before_unscale")


SCENARIO = Scenario(
    name="seed003_clip_before_unscale",
    bug="clip_grad_norm_ and a NaN check run before scaler.unscale_() (seed 003)",
    train=train,
    expect=("TD204",),
    top="TD204",
    where={"source": line_of("still scaled if not unscaled")},
    twin="seed003_healthy",
    steps=40,
)

if __name__ == "__main__":
    train()

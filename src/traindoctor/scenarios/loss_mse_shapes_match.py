"""Healthy twin of loss_mse_broadcast: prediction squeezed to (B,); the user's own accuracy-like
metric still broadcasts (B, 1) against (B,), but that is their log line, not a loss input."""

from ._base import Scenario
from .loss_mse_broadcast import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, healthy=True)


SCENARIO = Scenario(name="loss_mse_shapes_match", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

"""Healthy twin of nan_masked_by_nan_to_num: the norm is clamped, nothing to hide."""

from ._base import Scenario
from .nan_masked_by_nan_to_num import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, safe=True)


SCENARIO = Scenario(name="nan_norm_safe", bug="", train=train, steps=30)

if __name__ == "__main__":
    train()

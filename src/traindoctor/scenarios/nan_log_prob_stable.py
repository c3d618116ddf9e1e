"""Healthy twin of nan_log_prob_zero: the same model with binary_cross_entropy_with_logits."""

from ._base import Scenario
from .nan_log_prob_zero import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, stable=True)


SCENARIO = Scenario(name="nan_log_prob_stable", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

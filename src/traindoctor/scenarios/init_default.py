"""Healthy twin of head_init_large and ce_inputs_unnormalized: default init, standardized inputs."""

from ._base import Scenario
from .head_init_large import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, variant="default")


SCENARIO = Scenario(name="init_default", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

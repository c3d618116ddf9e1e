"""Healthy twin of loss_nll_log_relu: nll_loss on log_softmax of the logits."""

from ._base import Scenario
from .loss_nll_log_relu import train as _train


def train(steps: int = 20, watch=None):
    return _train(steps=steps, watch=watch, healthy=True)


SCENARIO = Scenario(name="loss_nll_log_softmax", bug="", train=train, steps=20)

if __name__ == "__main__":
    train()

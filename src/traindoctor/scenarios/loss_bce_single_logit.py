"""Healthy twin of loss_ce_single_logit: one logit with binary_cross_entropy_with_logits."""

from ._base import Scenario
from .loss_ce_single_logit import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, healthy=True)


SCENARIO = Scenario(name="loss_bce_single_logit", bug="", train=train, steps=30)

if __name__ == "__main__":
    train()

"""Healthy twin of loss_ce_seq_reshape: the (B, T, C) logits go to cross_entropy as
`logits.transpose(1, 2)`, classes in dim 1."""

from ._base import Scenario
from .loss_ce_seq_reshape import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, healthy=True)


SCENARIO = Scenario(name="loss_ce_seq_transpose", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

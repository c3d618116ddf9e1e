"""Healthy twin of loss_log_softmax_batch_dim: log_softmax over dim 1 (the classes) of the
(B, C) logits. The attention pooling inside the model still takes a softmax over dim 0 (the
time steps of the (T, B) scores): a legitimate softmax over dim 0 that is no loss input."""

from ._base import Scenario
from .loss_log_softmax_batch_dim import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, out_dim=1)


SCENARIO = Scenario(name="loss_log_softmax_class_dim", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

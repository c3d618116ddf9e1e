"""Healthy twin of loss_double_softmax: logits to CrossEntropyLoss with label smoothing, plus a
distillation term whose *targets* are a teacher's probabilities (fine: only inputs matter)."""

from ._base import Scenario
from .loss_double_softmax import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, healthy=True)


SCENARIO = Scenario(name="loss_logits_smoothing_distill", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

"""Healthy twin of argmax_selection_loss: the penalty uses the expected class under the softmax;
argmax only feeds the accuracy metric and a gather index (its gathered values keep the graph)."""

from ._base import Scenario
from ._cuts import train_argmax


def train(steps: int = 40, watch=None):
    return train_argmax(steps=steps, watch=watch, bug=False)


SCENARIO = Scenario(name="argmax_metric_only", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

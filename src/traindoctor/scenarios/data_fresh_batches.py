"""Healthy twin of data_same_batch: a fresh batch every step, and the same fixed validation
batch evaluated repeatedly (validation is not training data)."""

from ._base import Scenario
from .data_same_batch import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, fresh=True)


SCENARIO = Scenario(name="data_fresh_batches", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

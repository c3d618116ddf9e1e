"""Healthy twin of aux_loss_numpy_roundtrip: the confidence penalty stays in torch."""

from ._base import Scenario
from ._cuts import train_numpy


def train(steps: int = 40, watch=None):
    return train_numpy(steps=steps, watch=watch, bug=False)


SCENARIO = Scenario(name="aux_loss_in_torch", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

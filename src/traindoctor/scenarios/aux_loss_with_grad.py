"""Healthy twin of aux_loss_no_grad: the regularizer keeps its graph; the EMA teacher's output
is still computed under no_grad and detached, as a target should be."""

from ._base import Scenario
from ._cuts import train_no_grad


def train(steps: int = 40, watch=None):
    return train_no_grad(steps=steps, watch=watch, bug=False)


SCENARIO = Scenario(name="aux_loss_with_grad", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

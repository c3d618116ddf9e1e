"""Healthy twin of accum_loss_not_divided: `loss / accum` before each micro-batch's backward, so
the accumulated gradient is the mean and clipping acts only on the rare large gradient."""

from ._accum_clip import train as _train
from ._base import Scenario


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, divide=True)


SCENARIO = Scenario(name="accum_loss_divided", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

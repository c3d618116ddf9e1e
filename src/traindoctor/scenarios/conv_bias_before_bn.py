"""TD104's healthy twin: Conv2d(bias=True) right before BatchNorm2d under plain SGD. The conv
biases do not move (the norm cancels them, their gradient is 0 up to rounding): info, not an
error."""

from ._base import Scenario
from ._conv_bn import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, bug=None)


SCENARIO = Scenario(name="conv_bias_before_bn", bug="", train=train, steps=30)

if __name__ == "__main__":
    train()

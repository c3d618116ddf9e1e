"""TD104: the Conv+BatchNorm CNN with a LambdaLR that keeps lr at 0 (integer division): nothing
moves, the conv biases before the BatchNorms included, and the cause is the lr, not the norm."""

from ._base import Scenario
from ._conv_bn import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, bug="lr_zero")


SCENARIO = Scenario(
    name="conv_bn_lr_zero",
    bug="LambdaLR(opt, lambda s: s // 1000) on a Conv+BatchNorm CNN: lr 0 for 1000 steps",
    train=train,
    expect=("TD104",),
    top="TD104",
    twin="conv_bias_before_bn",
    steps=30,
)

if __name__ == "__main__":
    train()

"""TD103/TD102's healthy twin: the BYOL target encoder is a copy kept out of the optimizer and
moved by an EMA (`torch._foreach_lerp_`) under no_grad, as designed; online model fully trained."""

from ._base import Scenario
from ._byol import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug=None)


SCENARIO = Scenario(name="byol_ema_target", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

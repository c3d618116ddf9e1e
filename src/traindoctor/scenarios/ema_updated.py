"""TD405's healthy twin: the EMA copy is updated after every optimizer step and validated."""

from ._base import Scenario
from ._ema import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug=None)


SCENARIO = Scenario(name="ema_updated", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

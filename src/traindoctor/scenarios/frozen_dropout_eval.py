"""TD516's healthy twin: the frozen feature extractor is put in eval mode after model.train()."""

from ._base import Scenario
from ._frozen_dropout import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug=False)


SCENARIO = Scenario(name="frozen_dropout_eval", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

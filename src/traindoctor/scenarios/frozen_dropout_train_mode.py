"""TD516: a frozen feature extractor left in train mode: its dropout keeps dropping features."""

from ._base import Scenario
from ._frozen_dropout import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug=True)


SCENARIO = Scenario(
    name="frozen_dropout_train_mode",
    bug="feature extractor frozen with requires_grad_(False) but kept in train mode: dropout on",
    train=train,
    steps=40,
    expect=("TD516",),
    top="TD516",
    where={"module": "features"},
    twin="frozen_dropout_eval",
)

if __name__ == "__main__":
    train()

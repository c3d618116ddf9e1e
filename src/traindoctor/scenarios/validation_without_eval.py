"""Validation runs under no_grad without model.eval(): BatchNorm in train mode sees validation data."""

from ._base import Scenario
from ._seed000 import line_of
from ._seed000 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="no_eval")


SCENARIO = Scenario(
    name="validation_without_eval",
    bug="Validation runs under no_grad without model.eval(): BatchNorm in train mode sees validation data",
    train=train,
    steps=40,
    expect=("TD403",),
    top="TD403",
    where={"module": "<model>", "source": line_of("the validation forward")},
    twin="seed000_validator_copies",
)

if __name__ == "__main__":
    train()

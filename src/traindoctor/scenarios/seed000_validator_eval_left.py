"""Seed 000: the validator calls model.eval() and never switches back; later epochs train in eval mode."""

from ._base import Scenario
from ._seed000 import line_of
from ._seed000 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="eval_left")


SCENARIO = Scenario(
    name="seed000_validator_eval_left",
    bug="Seed 000: the validator calls model.eval() and never switches back; later epochs train in eval mode",
    train=train,
    steps=40,
    expect=("TD402",),
    top="TD402",
    where={"module": "<model>", "source": line_of("model.eval()  # BUG")},
    twin="seed000_validator_copies",
)

if __name__ == "__main__":
    train()

"""TD403: validation runs under no_grad without model.eval(), so BatchNorm in train mode sees
the validation data. The training program is seed 000's (seeds/seed000.py), whose fixed
validator (seed000_validator_copies) is the healthy twin."""

from functools import partial

from .._base import Scenario
from ..seeds.seed000 import line_of, train

SCENARIO = Scenario(
    name="validation_without_eval",
    bug="Validation runs under no_grad without model.eval(): BatchNorm in train mode sees "
    "validation data",
    train=partial(train, bug="no_eval"),
    steps=40,
    expect=("TD403",),
    top="TD403",
    where={"module": "<model>", "source": line_of("the validation forward")},
    twin="seed000_validator_copies",
)

if __name__ == "__main__":
    SCENARIO.train()

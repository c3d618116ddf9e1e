"""Seed 000: the validator fuses Conv+BN of the trained model under inference_mode; the next epoch crashes."""

from ._base import Scenario
from ._seed000 import line_of
from ._seed000 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="fuse")


SCENARIO = Scenario(
    name="seed000_validator_fuses",
    bug="Seed 000: the validator fuses Conv+BN of the trained model under inference_mode; the next epoch crashes",
    train=train,
    steps=40,
    expect=("TD401",),
    top="TD401",
    where={"params_prefix": "", "source": line_of("BUG: the trained model is fused")},
    twin="seed000_validator_copies",
    raises=RuntimeError,
)

if __name__ == "__main__":
    train()

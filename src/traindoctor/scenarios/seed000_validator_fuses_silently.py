"""Seed 000 without the crash: the validator fuses the trained model under inference_mode and
the trainer never touches requires_grad, so training goes on with untrainable fused convs while
the optimizer steps the old, unused weights."""

from ._base import Scenario
from ._seed000 import line_of
from ._seed000 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="fuse", unfreeze=False)


SCENARIO = Scenario(
    name="seed000_validator_fuses_silently",
    bug="The validator fuses the trained model under inference_mode; training goes on with "
    "inference-tensor convs and a stale optimizer",
    train=train,
    steps=40,
    expect=("TD401", "TD111"),
    top="TD401",
    where={"params_prefix": "", "source": line_of("BUG: the trained model is fused")},
    twin="seed000_validator_copies",
)

if __name__ == "__main__":
    train()

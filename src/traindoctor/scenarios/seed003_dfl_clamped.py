"""Seed 003, the report's "fix": DFL probabilities clamped at 1e-6 and the loss at 15, with
bin 0 holding almost all the mass: the clamp is active and passes no gradient."""

from ._base import Scenario
from ._seed003 import line_of
from ._seed003 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="dfl_clamped")


SCENARIO = Scenario(
    name="seed003_dfl_clamped",
    bug="DFL probabilities clamped at 1e-6 (the report's fix) while most are below it: "
    "the clamp passes no gradient",
    train=train,
    expect=("TD301",),
    top="TD301",
    where={"source": line_of("prob = bins.float().softmax(-1).clamp(min=1e-6)")},
    twin="seed003_dfl_clamp_inactive",
    steps=40,
)

if __name__ == "__main__":
    train()

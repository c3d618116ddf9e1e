"""Seed 003 variant: -log of a bin probability that underflows to exactly 0 (no epsilon)."""

from ._base import Scenario
from ._seed003 import line_of
from ._seed003 import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="log_prob_zero")


SCENARIO = Scenario(
    name="seed003_log_prob_zero",
    bug="DFL takes -log of a probability that is exactly 0 in float32: the loss is inf (seed 003)",
    train=train,
    expect=("TD201",),
    top="TD201",
    where={"source": line_of("-torch.log(p_left + eps)")},
    twin="seed003_healthy",
    steps=40,
)

if __name__ == "__main__":
    train()

"""Seed 001: torch.where(union > MIN_UNION, giou1d, 0) picks the constant branch"""

from ._base import Scenario
from ._seed001 import line_of
from ._seed001 import train as _train


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, bug="where_constant")


SCENARIO = Scenario(
    name="seed001_where_constant",
    bug="Seed 001: torch.where(union > MIN_UNION, giou1d, 0) picks the constant branch",
    train=train,
    expect=("TD301",),
    top="TD301",
    where={"source": line_of("giou1d = torch.where(union > MIN_UNION")},
    twin="seed001_healthy",
    steps=30,
)

if __name__ == "__main__":
    train()

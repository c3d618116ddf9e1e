"""TD405: the EMA copy that is validated each epoch is never updated (another copy is)."""

from ._base import Scenario
from ._ema import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="never_updated")


SCENARIO = Scenario(
    name="ema_never_updated",
    bug="The validated EMA copy is never updated: every validation sees the initial weights",
    train=train,
    steps=40,
    expect=("TD405",),
    top="TD405",
    twin="ema_updated",
    # Zero-code mode finds the validated copy by measurement: bit-identical to the model at
    # the first backward, run without gradient every 8 steps, never changing.
    where={"source": "_ema.py"},
)

if __name__ == "__main__":
    train()

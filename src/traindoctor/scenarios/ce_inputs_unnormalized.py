"""TD209: features on a raw scale (x*40+100) reach cross-entropy as huge logits: the first
loss is far above ln C although every layer has PyTorch's default init."""

from ._base import Scenario
from .head_init_large import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, variant="unnormalized")


SCENARIO = Scenario(
    name="ce_inputs_unnormalized",
    bug="inputs x*40+100 never standardized: cross-entropy starts far above ln 4 = 1.39",
    train=train,
    expect=("TD209",),
    top="TD209",
    where={"source": "head_init_large.py"},
    twin="init_default",
    steps=40,
)

if __name__ == "__main__":
    train()

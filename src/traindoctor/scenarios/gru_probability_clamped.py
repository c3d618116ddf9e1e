"""TD301: the same GRU, whose loss (computed in forward) takes -log(p.clamp(min=0.05)) of the
target's probability: at init every p is about 1/27 < 0.05, so the clamp zeroes the whole
gradient and nothing trains. No line is known for it (the loss is inside the model); the block
is confirmed on the second walk."""

from ._base import Scenario
from ._learned_start import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, clamp=True)


SCENARIO = Scenario(
    name="gru_probability_clamped",
    bug="-log(p.clamp(min=0.05)) with p ~ 1/27 at init: the clamp zeroes the whole gradient",
    train=train,
    expect=("TD301",),
    top="TD301",
    twin="gru_learned_start_state",
    steps=40,
)

if __name__ == "__main__":
    train()

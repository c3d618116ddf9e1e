"""Under gradient accumulation, scaler.unscale_() runs after the first micro-batch of each
window (`i % accum == 0`, off by one) instead of after the last: the next micro-batches add
scaled gradients into unscaled ones."""

from ._amp import line_of
from ._amp import train as _train
from ._base import Scenario


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, bug="unscale_first_micro", accum=4)


SCENARIO = Scenario(
    name="amp_unscale_inside_accumulation",
    bug="unscale_ after the first of 4 micro-batches: scaled and unscaled gradients are summed",
    train=train,
    expect=("TD204",),
    top="TD204",
    where={"source": line_of("scaler.scale(loss / accum).backward()"), "params_prefix": ""},
    twin="amp_accumulation_healthy",
    steps=30,
)

if __name__ == "__main__":
    train()

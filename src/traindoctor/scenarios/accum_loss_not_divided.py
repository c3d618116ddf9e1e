"""TD515: gradient accumulation over 4 micro-batches without `loss / accum`: the gradient is 4x
the mean and clip_grad_norm_(max_norm=1.0) clips at every step."""

from ._accum_clip import train as _train
from ._base import Scenario


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, divide=False)


SCENARIO = Scenario(
    name="accum_loss_not_divided",
    bug="accumulated micro-batch losses not divided by the number of micro-batches",
    train=train,
    expect=("TD515",),
    top="TD515",
    where={"source": "_accum_clip.py"},
    twin="accum_loss_divided",
    steps=40,
)

if __name__ == "__main__":
    train()

"""Seed 003 variant: clip_grad_norm_ before scaler.unscale_(), on gradients still scaled."""

from ._amp import line_of
from ._amp import train as _train
from ._base import Scenario


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="clip_before_unscale")


SCENARIO = Scenario(
    name="amp_clip_before_unscale",
    bug="clip_grad_norm_(params, 1.0) runs before scaler.unscale_(): clipped while 65536x scaled",
    train=train,
    expect=("TD204",),
    top="TD204",
    where={"source": line_of("BUG: clip still scaled"), "params_prefix": ""},
    twin="amp_healthy",
    steps=40,
)

if __name__ == "__main__":
    train()

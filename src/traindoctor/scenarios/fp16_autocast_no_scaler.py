"""TD211: float16 autocast without a GradScaler: small gradients underflow
to exactly 0 in every layer."""

import torch

from ._autocast_loss import train as _train
from ._base import Scenario


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, dtype=torch.float16)


SCENARIO = Scenario(
    name="fp16_autocast_no_scaler",
    bug="torch.autocast(dtype=float16) with no GradScaler: small gradients underflow to 0",
    train=train,
    expect=("TD211",),
    top="TD211",
    where={"source": "_autocast_loss.py"},
    twin="bf16_autocast_no_scaler",
    steps=40,
)

if __name__ == "__main__":
    train()

"""Healthy twin of fp16_autocast_no_scaler: bfloat16 autocast, which keeps float32's exponent
range, needs no GradScaler; the same small gradients survive."""

import torch

from ._autocast_loss import train as _train
from ._base import Scenario


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, dtype=torch.bfloat16)


SCENARIO = Scenario(name="bf16_autocast_no_scaler", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

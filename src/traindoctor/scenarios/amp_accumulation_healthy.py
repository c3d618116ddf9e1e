"""Healthy twin of amp_unscale_inside_accumulation: 4 micro-batches of scaled backward, then
once unscale_, clip, scaler.step, scaler.update."""

from ._amp import train as _train
from ._base import Scenario


def train(steps: int = 30, watch=None):
    return _train(steps=steps, watch=watch, bug=None, accum=4)


SCENARIO = Scenario(name="amp_accumulation_healthy", bug="", train=train, steps=30)

if __name__ == "__main__":
    train()

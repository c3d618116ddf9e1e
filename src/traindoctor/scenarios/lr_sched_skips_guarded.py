"""Healthy twin of lr_sched_steps_on_amp_skips: the same float16 run and GradScaler, the
warmup+cosine schedule stepped only when the scaler did not skip the optimizer step."""

from ._base import Scenario
from .lr_sched_steps_on_amp_skips import train as _train


def train(steps: int = 48, watch=None):
    return _train(steps=steps, watch=watch, guarded=True)


SCENARIO = Scenario(name="lr_sched_skips_guarded", bug="", train=train, steps=48)

if __name__ == "__main__":
    train()

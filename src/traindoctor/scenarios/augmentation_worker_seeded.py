"""Healthy twin of augmentation_shared_rng: worker_init_fn reseeds the dataset's Generator
from each worker's own seed."""

from ._base import Scenario
from .augmentation_shared_rng import train as _train


def train(steps: int = 14, watch=None):
    return _train(steps=steps, watch=watch, seeded=True)


SCENARIO = Scenario(name="augmentation_worker_seeded", bug="", train=train, steps=14)

if __name__ == "__main__":
    train()

"""Healthy twin of seed004_auroc_one_class: the validation masks are binarized with `> 0`, so
both classes are present and every pixel metric is defined."""

from ._base import Scenario
from .seed004_auroc_one_class import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, val_threshold=0)


SCENARIO = Scenario(name="seed004_auroc_two_classes", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

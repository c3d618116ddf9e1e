"""Healthy twin of seed000_metrics_stale_attribute: the epoch-end callback logs
`validator.results`, which the validator has just filled in."""

from ._base import Scenario
from .seed000_metrics_stale_attribute import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, stale=False)


SCENARIO = Scenario(name="seed000_metrics_fresh_attribute", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()

"""Healthy twin of nan_grad_pairwise_distance: an epsilon under the sqrt."""

from ._base import Scenario
from .nan_grad_pairwise_distance import train as _train


def train(steps: int = 20, watch=None):
    return _train(steps=steps, watch=watch, eps=1e-8)


SCENARIO = Scenario(name="nan_grad_pairwise_distance_eps", bug="", train=train, steps=20)

if __name__ == "__main__":
    train()

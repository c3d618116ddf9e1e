"""Control for TD506: multi-label tagging with BCE-with-logits on raw logits (several tags per
sample, targets that are not one-hot): healthy, must stay silent."""

from ._base import Scenario
from ._multilabel import train as _train


def train(steps: int = 48, watch=None):
    return _train(steps=steps, watch=watch, bug=None)


SCENARIO = Scenario(name="bce_multilabel_logits", bug="", train=train, steps=48)

if __name__ == "__main__":
    train()

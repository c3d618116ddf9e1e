"""Healthy twin of frozen_bn_backbone_train_mode: `model.backbone.eval()` after every
`model.train()`, so the frozen BatchNorm keeps its loaded running statistics."""

from ._base import Scenario
from .frozen_bn_backbone_train_mode import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, backbone_eval=True)


SCENARIO = Scenario(name="frozen_bn_backbone_eval", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()

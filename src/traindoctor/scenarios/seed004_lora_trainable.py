"""Healthy twin of seed004_requires_grad_quantized: stage 2 unfreezes only the float
components (vision tower, projector); the 4-bit LLM trains through its LoRA adapters."""

from ._base import Scenario
from ._seed004_vlm import REQUIRES, TinyVLM
from ._seed004_vlm import train as _train


def unfreeze_components(model: TinyVLM) -> None:
    for comp in [model.vision_tower, model.projector]:  # float; the LLM trains through LoRA
        for p in comp.parameters():
            p.requires_grad = True


def train(steps: int = 12, watch=None):
    return _train(steps=steps, watch=watch, unfreeze=unfreeze_components)


SCENARIO = Scenario(
    name="seed004_lora_trainable",
    bug="",
    train=train,
    steps=12,
    requires=REQUIRES,
)

if __name__ == "__main__":
    train()

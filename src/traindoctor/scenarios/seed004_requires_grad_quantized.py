"""TD501: seed report 004's stage-2 loop sets requires_grad=True on every parameter of the
vision tower, the projector and the LLM, but the LLM is loaded in 4-bit: torch raises
"only Tensors of floating point and complex dtype can require gradients" on its first
quantized (uint8 Params4bit) weight, and the script dies."""

from ._base import Scenario
from ._seed004_vlm import REQUIRES, TinyVLM
from ._seed004_vlm import train as _train


def unfreeze_components(model: TinyVLM) -> None:
    for comp in [model.vision_tower, model.projector, model.llm]:
        for p in comp.parameters():
            p.requires_grad = True  # BUG: the LLM's attention/MLP weights are 4-bit (uint8)


def train(steps: int = 12, watch=None):
    return _train(steps=steps, watch=watch, unfreeze=unfreeze_components)


SCENARIO = Scenario(
    name="seed004_requires_grad_quantized",
    bug="stage 2 sets requires_grad=True on every param of the 4-bit LLM: torch raises",
    train=train,
    expect=("TD501",),
    top="TD501",
    where={
        "module": "llm",
        "params_prefix": "llm.",
        "source": "seed004_requires_grad_quantized.py",
    },
    twin="seed004_lora_trainable",
    steps=12,
    raises=RuntimeError,
    requires=REQUIRES,
)

if __name__ == "__main__":
    train()

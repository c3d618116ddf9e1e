"""The model of seed report 004 (shared/seeds/004_*.txt), small: a vision-language model whose
LLM is loaded in 4-bit with LoRA adapters on top, trained in two stages.

- vision_tower: a conv patch embedding and a linear layer (float32);
- projector: nn.Linear from vision features to the LLM's hidden size (float32);
- llm: a 2-layer Llama built from a config (random init, nothing downloaded) whose attention
  and MLP linears are bitsandbytes `Linear4bit` (weights stored as uint8), with PEFT LoRA
  adapters on q_proj/v_proj: what `from_pretrained(..., quantization_config=4bit)` followed
  by `get_peft_model` gives, at toy size.

Stage 1 trains the projector and the LoRA adapters; stage 2 calls `unfreeze(model)` (the
scenario's own code, where the planted bug lives) and adds what it made trainable to the
optimizer. transformers, peft and bitsandbytes are imported inside `build_model`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from .._base import Scenario, log

REQUIRES = ("transformers", "peft", "bitsandbytes")
VOCAB, HIDDEN, CLASSES, CAPTION = 64, 32, 4, 5


class VisionTower(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, kernel_size=4, stride=4)  # 8x8 image -> 4 patches
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, HIDDEN)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.act(self.patch(images)).flatten(2).transpose(1, 2)
        return self.proj(x)


class TinyVLM(nn.Module):
    def __init__(self, llm: nn.Module) -> None:
        super().__init__()
        self.vision_tower = VisionTower()
        self.projector = nn.Linear(HIDDEN, HIDDEN)
        self.llm = llm

    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        image_tokens = self.projector(self.vision_tower(images))
        text = self.llm.get_input_embeddings()(captions)
        embeds = torch.cat([image_tokens, text], dim=1)
        ignore = torch.full(image_tokens.shape[:2], -100, dtype=torch.long)
        labels = torch.cat([ignore, captions], dim=1)
        return self.llm(inputs_embeds=embeds, labels=labels).loss


def quantize_4bit(module: nn.Module, names: tuple[str, ...]) -> None:
    """Swap these nn.Linear layers for bitsandbytes Linear4bit (NF4), as a 4-bit load does."""
    import bitsandbytes as bnb

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name in names:
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=torch.float32,
                quant_type="nf4",
            )
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
            setattr(module, name, q.to("cpu"))  # .to() quantizes: uint8 storage from here on
        else:
            quantize_4bit(child, names)


def build_model() -> TinyVLM:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    llm = LlamaForCausalLM(config)
    quantize_4bit(llm.model, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"))
    quantize_4bit(llm.model, ("down_proj",))
    llm = get_peft_model(
        llm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    model = TinyVLM(llm)
    model.vision_tower.requires_grad_(False)  # "pretrained": frozen in stage 1
    return model


def make_data(n: int = 64, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class shows in a colour pattern; the caption is the class's token sequence."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    patterns = torch.randn(CLASSES, 3, 8, 8, generator=g)
    images = patterns[labels] + 0.3 * torch.randn(n, 3, 8, 8, generator=g)
    tokens = 1 + torch.arange(CLASSES * CAPTION).reshape(CLASSES, CAPTION)
    return images, tokens[labels]


def unfreeze_components(model: TinyVLM, bug: bool = False) -> None:
    """Stage 2: the float components (vision tower, projector); the LLM trains through LoRA."""
    components = [model.vision_tower, model.projector]
    if bug:
        components.append(model.llm)
    for comp in components:
        for p in comp.parameters():
            p.requires_grad = True  # BUG if bug: the LLM's attention/MLP weights are 4-bit (uint8)


def train(steps: int = 12, watch=None, bug: bool = False, batch: int = 16):
    torch.manual_seed(0)
    images, captions = make_data()
    model = build_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    g = torch.Generator().manual_seed(5)
    for step in range(steps):
        if step == steps // 2:
            # Stage 2: fine-tune more of the model; add what became trainable to the optimizer.
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            unfreeze_components(model, bug)
            new = [p for p in model.parameters() if p.requires_grad and id(p) not in held]
            if new:
                optimizer.add_param_group({"params": new})
        idx = torch.randint(0, len(images), (batch,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss = model(images[idx], captions[idx])
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    # TD501: stage 2 sets requires_grad=True on every parameter of the vision tower, the
    # projector and the LLM, but the LLM is loaded in 4-bit: torch raises "only Tensors of
    # floating point and complex dtype can require gradients" on its first quantized (uint8
    # Params4bit) weight, and the script dies.
    Scenario(
        name="seed004_requires_grad_quantized",
        bug="stage 2 sets requires_grad=True on every param of the 4-bit LLM: torch raises",
        train=partial(train, bug=True),
        expect=("TD501",),
        top="TD501",
        where={
            "module": "llm",
            "params_prefix": "llm.",
            "source": "seed004_vlm.py",
        },
        twin="seed004_lora_trainable",
        steps=12,
        raises=RuntimeError,
        requires=REQUIRES,
    ),
    # Stage 2 unfreezes only the float components (vision tower, projector); the 4-bit LLM
    # trains through its LoRA adapters.
    Scenario(name="seed004_lora_trainable", bug="", train=train, steps=12, requires=REQUIRES),
)

if __name__ == "__main__":
    SCENARIOS[0].train()

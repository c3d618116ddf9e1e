"""Seed 000 without Ultralytics: a Conv+BN detector trained in a plain loop whose per-epoch
"validator" runs on the live model the way a YOLO validator does: under
`torch.inference_mode()`, fusing Conv+BN into new conv weights and calling `model.eval()`.

`bug` picks what the validator does wrong:
- "fuse": fuses the trained model in place under inference_mode (new inference-tensor params
  the optimizer does not hold); the next epoch's `requires_grad = True` loop then crashes with
  "Setting requires_grad=True on inference tensor outside InferenceMode is not allowed".
- "eval_left": runs under no_grad, calls `model.eval()` and never switches back; the loop
  does not call `model.train()` per epoch, so every later step trains in eval mode.
- "no_eval": forgets `model.eval()`: validation batches go through BatchNorm in train mode.
- None: validates a fused deep copy, and restores the mode (the healthy twin).
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, line_in, log


class ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Detector(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = ConvBN(1, 8)
        self.block = ConvBN(8, 16)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.stem(x), 2)
        x = self.block(x).mean((2, 3))
        return self.head(self.drop(x))


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Like ultralytics.utils.torch_utils.fuse_conv_and_bn: a new conv with BN folded in."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True
    ).requires_grad_(False)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    fused.bias.copy_(bn.bias - bn.running_mean * scale)
    return fused


def fuse(model: Detector) -> Detector:
    for m in model.modules():
        if isinstance(m, ConvBN) and hasattr(m, "bn"):
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    return model


def make_data(n: int = 192, seed: int = 0):
    """12x12 images whose class is where a bright blob sits (left, middle, right)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 12, 12, generator=g)
    for i in range(n):
        c = 2 + 4 * int(y[i])
        x[i, 0, 4:8, c : c + 3] += 2.0
    return x, y


class Validator:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, bug: str | None, doc=None) -> None:
        self.x, self.y, self.bug, self.doc = x, y, bug, doc
        self.accuracy: float | None = None

    def __call__(self, model: Detector) -> float:
        if self.bug == "fuse":
            with torch.inference_mode():  # BUG: the trained model is fused in here
                model = fuse(model)
                model.eval()
                return self._accuracy(model)
        if self.bug == "eval_left":
            model.eval()  # BUG: never switched back to train mode
            with torch.no_grad():
                return self._accuracy(model)
        if self.bug == "no_eval":
            with torch.no_grad():  # BUG: no model.eval(): BatchNorm in train mode
                return self._accuracy(model)  # validation forwards
        was_training = model.training
        copy_ = fuse(copy.deepcopy(model)).eval()
        with torch.inference_mode():
            acc = self._accuracy(copy_)
        model.train(was_training)
        return acc

    def _accuracy(self, model: nn.Module) -> float:
        correct = 0
        for i in range(0, len(self.x), 32):
            logits = model(self.x[i : i + 32])  # the validation forward
            correct += int((logits.argmax(1) == self.y[i : i + 32]).sum())
        self.accuracy = correct / len(self.x)
        return self.accuracy


def line_of(marker: str) -> str:
    """`seed000.py:LINE` of the first line holding `marker`: where a finding must point."""
    return line_in(__file__, marker)


def train(
    steps: int = 40,
    watch=None,
    bug: str | None = None,
    per_epoch: int = 8,
    unfreeze: bool = True,
):
    torch.manual_seed(0)
    x, y = make_data()
    xv, yv = make_data(96, seed=1)
    model = Detector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    validator = Validator(xv, yv, bug, doc)
    g = torch.Generator().manual_seed(2)
    done = 0
    while done < steps:
        if bug != "eval_left":
            model.train()
        if unfreeze:
            for v in model.parameters():
                v.requires_grad = True  # the trainer's "unfreeze all layers" at each epoch
        perm = torch.randperm(len(x), generator=g)
        for i in range(per_epoch):
            idx = perm[i * 16 : (i + 1) * 16]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            log(doc, loss=loss)
            done += 1
            if done >= steps:
                break
        acc = validator(model)
        log(doc, val_accuracy=acc)
    return model


SCENARIOS = (
    Scenario(
        name="seed000_validator_eval_left",
        bug="Seed 000: the validator calls model.eval() and never switches back; later epochs "
        "train in eval mode",
        train=partial(train, bug="eval_left"),
        steps=40,
        expect=("TD402",),
        top="TD402",
        where={"module": "<model>", "source": line_of("model.eval()  # BUG")},
        twin="seed000_validator_copies",
    ),
    Scenario(
        name="seed000_validator_fuses",
        bug="Seed 000: the validator fuses Conv+BN of the trained model under inference_mode; "
        "the next epoch crashes",
        train=partial(train, bug="fuse"),
        steps=40,
        expect=("TD401",),
        top="TD401",
        where={"params_prefix": "", "source": line_of("BUG: the trained model is fused")},
        twin="seed000_validator_copies",
        raises=RuntimeError,
    ),
    # Without the crash: the trainer never touches requires_grad, so training goes on with
    # untrainable fused convs while the optimizer steps the old, unused weights.
    Scenario(
        name="seed000_validator_fuses_silently",
        bug="The validator fuses the trained model under inference_mode; training goes on with "
        "inference-tensor convs and a stale optimizer",
        train=partial(train, bug="fuse", unfreeze=False),
        steps=40,
        expect=("TD401", "TD111"),
        top="TD401",
        where={"params_prefix": "", "source": line_of("BUG: the trained model is fused")},
        twin="seed000_validator_copies",
    ),
    # Fixed: the validator fuses a deep copy under inference_mode and restores the mode.
    Scenario(name="seed000_validator_copies", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    train()

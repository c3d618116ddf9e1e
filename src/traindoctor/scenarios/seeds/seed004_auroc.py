"""TD406 (seed 004): a tiny mask predictor validated with pixel AUROC/IoU/precision/recall,
where the validation masks are binarized with `> 127` (a recipe for 0/255 PNGs) although they
are stored as 0/1: every validation pixel is background, and AUROC prints as 0.0000."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

from .._base import Scenario, log, validating

SIZE = 16


def blobs(n: int, seed: int):
    """Images with one bright square each and its 0/1 mask, stored as uint8 like a PNG."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, SIZE, SIZE, generator=g) * 0.3
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
    corners = torch.randint(0, SIZE - 6, (n, 2), generator=g)
    for i, (r, c) in enumerate(corners.tolist()):
        images[i, 0, r : r + 6, c : c + 6] += 1.0
        masks[i, r : r + 6, c : c + 6] = 1
    return images, masks


class MaskNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x))).squeeze(1)  # mask logits (N, H, W)


def metrics():
    return {
        "auroc": BinaryAUROC(),
        "iou": BinaryJaccardIndex(),
        "precision": BinaryPrecision(),
        "recall": BinaryRecall(),
    }


def train(steps: int = 60, watch=None, bug: bool = False):
    val_threshold = 127 if bug else 0
    torch.manual_seed(0)
    images, masks = blobs(128, seed=4)
    val_images, val_masks = blobs(32, seed=40)
    val_targets = (val_masks > val_threshold).long()  # BUG unless 0: the masks are 0/1
    val_loader = [(val_images[i : i + 16], val_targets[i : i + 16]) for i in (0, 16)]
    model = MaskNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    doc = watch(model, optimizer) if watch else None
    history = []
    for step in range(steps):
        i = (step * 16) % 128
        optimizer.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(
            model(images[i : i + 16]), masks[i : i + 16].float()
        )
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if step % 20 == 19:
            if doc is not None:
                import traindoctor as td

                history.append(td.evaluate(model, val_loader, metrics()))
            else:
                history.append(_evaluate_by_hand(model, val_loader, doc))
    return history


def _evaluate_by_hand(model, loader, doc):
    ms = metrics()
    with validating(doc, model):
        for x, y in loader:
            p = model(x).sigmoid()
            for m in ms.values():
                m.update(p, y)
    return {k: float(m.compute()) for k, m in ms.items()}


SCENARIOS = (
    Scenario(
        name="seed004_auroc_one_class",
        bug="validation masks binarized with `> 127` although stored as 0/1: no positive pixel, "
        "so AUROC and recall are undefined (torchmetrics returns 0.0)",
        train=partial(train, bug=True),
        expect=("TD406",),
        top="TD406",
        twin="seed004_auroc_two_classes",
        steps=60,
        modes=("watch",),  # the metrics are checked by td.evaluate(), an API call
    ),
    # The validation masks are binarized with `> 0`, so both classes are present and every pixel
    # metric is defined.
    Scenario(name="seed004_auroc_two_classes", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    SCENARIOS[0].train()

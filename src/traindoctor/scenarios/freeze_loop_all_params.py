"""TD110: a freezing loop meant for the backbone runs over model.parameters(): nothing trains,
and backward() raises "element 0 of tensors does not require grad"."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log
from ._nets import Classifier


def train(steps: int = 20, watch=None):
    x, y = classification_data(n=512, seed=6)
    model = Classifier()
    for p in model.parameters():  # BUG: meant model.backbone.parameters()
        p.requires_grad = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=6)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        log(doc, loss=loss)
        loss.backward()  # RuntimeError: element 0 of tensors does not require grad
        optimizer.step()
    return model


SCENARIO = Scenario(
    name="freeze_loop_all_params",
    bug="`for p in model.parameters(): p.requires_grad = False` (meant: the backbone only)",
    train=train,
    expect=("TD110",),
    top="TD110",
    where={"module": "<model>", "source": "freeze_loop_all_params.py"},
    twin="freeze_backbone_only",
    steps=20,
    raises=RuntimeError,
)

if __name__ == "__main__":
    train()

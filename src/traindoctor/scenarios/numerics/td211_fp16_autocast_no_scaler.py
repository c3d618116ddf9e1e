"""TD211: autocast without a GradScaler, on a loss with a small scale: the classification loss is
weighted 1e-5 (a weight tuned in float32 with AdamW, whose update does not depend on the
gradient's scale), so the gradients of the logits are ~1e-7 per element.

- dtype=float16:  much of that gradient is below float16's smallest subnormal (6e-8) when
                  autocast casts it back into the float16 backward: it underflows to exactly 0
                  in every layer and the model barely learns (bug: float16 needs a GradScaler);
- dtype=bfloat16: bfloat16 has float32's exponent range: the same gradients survive, no scaler
                  is needed (the healthy twin `bf16_autocast_no_scaler`).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, classification_data, log
from .._nets import Classifier


def train(steps: int = 60, watch=None, bug: bool = False, weight=1e-5):
    dtype = torch.float16 if bug else torch.bfloat16
    x, y = classification_data(n=512, seed=19)
    g = torch.Generator().manual_seed(19)
    torch.manual_seed(19)
    model = Classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None  # no GradScaler
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        with torch.autocast("cpu", dtype=dtype):  # BUG when dtype is float16: no scaler
            loss = weight * F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="fp16_autocast_no_scaler",
        bug="torch.autocast(dtype=float16) with no GradScaler: small gradients underflow to 0",
        train=partial(train, bug=True),
        expect=("TD211",),
        top="TD211",
        where={"source": "td211_fp16_autocast_no_scaler.py"},
        twin="bf16_autocast_no_scaler",
        steps=40,
    ),
    Scenario(name="bf16_autocast_no_scaler", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    train(bug=True)

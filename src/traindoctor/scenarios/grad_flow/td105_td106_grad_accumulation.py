"""TD105 and TD106 in a gradient-accumulation loop (step and zero_grad() every `accum_steps`
micro-batches):

- `bug="step_never_reached"` (TD105): the step condition can never be true
  (`i % accum == accum`);
- `bug="zero_grad_missing"` (TD106): no zero_grad() anywhere: every step adds all past gradients.
The healthy twin `grad_accumulation` steps and zeroes once every `accum_steps` micro-batches.
"""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log
from .._nets import Classifier


def train(steps: int = 60, watch=None, bug: str | None = None, accum_steps: int = 4):
    x, y = classification_data(n=512, seed=4)
    model = Classifier()
    if bug == "step_never_reached":  # this variant was written with AdamW; kept as it was
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=16, seed=4)
    for i in range(steps * accum_steps):
        xb, yb = next(data)
        loss = F.cross_entropy(model(xb), yb) / accum_steps
        loss.backward()
        log(doc, loss=loss * accum_steps)
        if bug == "step_never_reached":
            if i % accum_steps == accum_steps:  # BUG: a remainder is always < accum_steps
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        elif (i + 1) % accum_steps == 0:
            optimizer.step()  # BUG (zero_grad_missing): no optimizer.zero_grad() in the loop
            if bug != "zero_grad_missing":
                optimizer.zero_grad(set_to_none=True)
    return model


SCENARIOS = (
    Scenario(
        name="accum_step_never_reached",
        bug="`if i % accum_steps == accum_steps: optimizer.step()` is never true",
        train=partial(train, bug="step_never_reached"),
        expect=("TD105",),
        top="TD105",
        where={"source": "td105_td106_grad_accumulation.py"},
        twin="grad_accumulation",
        steps=20,
    ),
    Scenario(
        name="zero_grad_missing",
        bug="accumulation loop that steps every 4 micro-batches and never calls zero_grad()",
        train=partial(train, bug="zero_grad_missing"),
        expect=("TD106",),
        top="TD106",
        where={"source": "td105_td106_grad_accumulation.py"},
        twin="grad_accumulation",
        steps=30,
    ),
    Scenario(name="grad_accumulation", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug="zero_grad_missing")

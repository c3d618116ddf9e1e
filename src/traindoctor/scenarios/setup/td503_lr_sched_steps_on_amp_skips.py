"""TD503: float16 autocast with a GradScaler whose init_scale is 2**32 (Megatron-LM's default
initial loss scale): the scaled gradients overflow float16, so the scaler skips 14 of the first
16 optimizer steps (1-13 and 16; measured, torch 2.13 CPU) while it backs off to a workable
scale. The warmup+cosine schedule, sized in optimizer steps, is stepped every iteration anyway:
the 12-step warmup is spent on steps that update nothing, the first real update runs at the
peak lr, and the schedule stays 14 steps ahead of the optimizer for the rest of the run. (On
float32 or bfloat16 gradients the same scaler skips nothing: their range does not overflow.)

Healthy twin: the same run stepping the schedule only when the scaler did not skip (the scale
did not drop), as PyTorch's AMP recipe shows."""

from functools import partial

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler

from .._base import Scenario, batches, classification_data, line_in, log
from .._nets import Classifier


def train(steps: int = 48, watch=None, bug: bool = False):
    x, y = classification_data(n=512, seed=13)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    warmup = 12
    scheduler = lr_scheduler.SequentialLR(
        optimizer,
        [
            lr_scheduler.LinearLR(optimizer, start_factor=0.05, total_iters=warmup),
            lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps - warmup),
        ],
        milestones=[warmup],
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**32)
    doc = watch(model, optimizer, scaler) if watch else None
    data = batches(x, y, batch=32, seed=13)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(xb).float(), yb)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if not bug:
            if scaler.get_scale() >= scale:  # the scaler did not skip this step
                scheduler.step()
        else:
            scheduler.step()  # BUG: also on the steps the scaler skipped
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="lr_sched_steps_on_amp_skips",
        bug="scheduler.step() every iteration while a GradScaler(init_scale=2**32) skips "
        "optimizer steps 1-13 and 16: the warmup is spent on skipped steps",
        train=partial(train, bug=True),
        expect=("TD503",),
        top="TD503",
        where={"source": line_in(__file__, "# BUG: also on the steps")},
        twin="lr_sched_skips_guarded",
        steps=48,
    ),
    # The same float16 run and GradScaler, the warmup+cosine schedule stepped only when the scaler
    # did not skip the optimizer step.
    Scenario(name="lr_sched_skips_guarded", bug="", train=train, steps=48),
)

if __name__ == "__main__":
    SCENARIOS[0].train()

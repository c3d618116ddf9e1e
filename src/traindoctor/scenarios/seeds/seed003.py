"""The run of seed report 003 (shared/seeds/003_*.txt), small: a detection-style conv model
whose box head predicts distribution bins (DFL) next to a class head, trained with three loss
parts under bf16 autocast and a `torch.amp.GradScaler("cpu")`, with the user's own NaN check
on the gradients before stepping.

`bug` plants one of the report's real causes:
- "clip_before_unscale": clip_grad_norm_ and the NaN check run on gradients still multiplied
                         by the scale (the report's "critical bug");
- "step_bypass":         optimizer.step() instead of scaler.step(optimizer);
- "final_conv_std":      the box head's final 1x1 conv initialized with std 10 (the report
                         blamed "default init"; the measured output scale is what matters);
- "log_prob_zero":       -log of a bin probability without epsilon; in bf16 the probability
                         of a far bin underflows to exactly 0 and the loss becomes inf;
- "dfl_clamped":         the report's "fix": probabilities clamped at 1e-6 and the per-box
                         DFL loss at 15, with bin 0 holding almost all the mass: the clamp is
                         active and passes no gradient ("dfl_clamp_inactive": same clamps, a
                         normal init, never active).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, line_in

REG_MAX = 8  # bins per box side


class TinyDetector(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 3, padding=1), nn.SiLU()
        )
        self.cv2 = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 4 * REG_MAX, 1)
        )
        self.cv3 = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, classes, 1)
        )

    def forward(self, x: torch.Tensor):
        f = self.backbone(x)
        bins = self.cv2(f).mean((2, 3)).view(-1, 4, REG_MAX)  # pooled: one box per image
        return bins, self.cv3(f).mean((2, 3))


def make_data(n: int = 256, classes: int = 3, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    feats = x.mean((2, 3))
    dist = torch.sigmoid(feats @ torch.randn(3, 4, generator=g) * 2) * (REG_MAX - 1.01)
    labels = (feats @ torch.randn(3, classes, generator=g)).argmax(1)
    return x, dist, labels


def dfl_clamped(bins: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The report's "fix": probabilities clamped at 1e-6, the per-box loss clamped at 15."""
    prob = bins.float().softmax(-1).clamp(min=1e-6)  # "fix": no log of 0
    left = target.long()
    w = target - left
    p_left = prob.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    p_right = prob.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    per_box = -torch.log(p_left) * (1 - w) - torch.log(p_right) * w
    return per_box.clamp(max=15.0).mean()  # "fix": no huge loss


def dfl(bins: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    prob = bins.float().softmax(-1) if eps else bins.softmax(-1)
    left = target.long()
    w = target - left
    p_left = prob.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    p_right = prob.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    return (-torch.log(p_left + eps) * (1 - w) - torch.log(p_right + eps) * w).mean()


def train(steps: int = 40, watch=None, bug: str | None = None):
    x, dist, labels = make_data()
    model = TinyDetector()
    if bug == "final_conv_std":
        nn.init.normal_(model.cv2[2].weight, std=10.0)  # BUG: final conv with a large std
    if bug == "dfl_clamped":
        with torch.no_grad():
            model.cv2[2].bias.view(4, REG_MAX)[:, 0] += 30.0  # bin 0 takes almost all the mass
    if bug == "log_prob_zero":
        with torch.no_grad():
            model.cv2[2].bias.view(4, REG_MAX)[:, 0] += (
                120.0  # bin 0 takes all the mass: others underflow to 0
            )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    doc = watch(model, optimizer, scaler) if watch else None
    proj = torch.arange(REG_MAX, dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (16,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bins, logits = model(x[idx])
            box = F.l1_loss(bins.float().softmax(-1) @ proj, dist[idx]) / REG_MAX
            cls = F.cross_entropy(logits.float(), labels[idx])
            eps = 0.0 if bug == "log_prob_zero" else 1e-7
            if bug in ("dfl_clamped", "dfl_clamp_inactive"):
                dfl_part = 0.25 * dfl_clamped(bins, dist[idx])
            else:
                dfl_part = 0.25 * dfl(bins, dist[idx], eps)  # BUG if eps == 0: log of an exact 0
            loss = box + cls + dfl_part
        if doc is not None:
            doc.log(loss=loss, parts={"box": box, "cls": cls, "dfl": dfl_part})
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if bug == "step_bypass":
            optimizer.step()  # BUG: bypasses scaler.step(): the update uses scaled gradients
            continue
        if bug != "clip_before_unscale":
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # still scaled if not unscaled
        if any(not torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
            print("NaN/Inf gradient: skipping step")  # the user's own check, as in the report
        scaler.step(optimizer)
        scaler.update()
    return model


def line_of(marker: str) -> str:
    """`seed003.py:LINE` of the first line holding `marker`: where a finding must point."""
    return line_in(__file__, marker)


SCENARIOS = (
    Scenario(
        name="seed003_clip_before_unscale",
        bug="clip_grad_norm_ and a NaN check run before scaler.unscale_() (seed 003)",
        train=partial(train, bug="clip_before_unscale"),
        expect=("TD204",),
        top="TD204",
        where={"source": line_of("still scaled if not unscaled")},
        twin="seed003_healthy",
        steps=40,
    ),
    Scenario(
        name="seed003_final_conv_std",
        bug="final box-head conv initialized with std 10: outputs start far larger than inputs (seed 003)",
        train=partial(train, bug="final_conv_std"),
        expect=("TD209",),
        top="TD209",
        where={"module": "cv2.2", "params_prefix": "cv2.2."},
        twin="seed003_healthy",
        steps=40,
    ),
    Scenario(
        name="seed003_log_prob_zero",
        bug="DFL takes -log of a probability that is exactly 0 in float32: the loss is inf (seed 003)",
        train=partial(train, bug="log_prob_zero"),
        expect=("TD201",),
        top="TD201",
        where={"source": line_of("-torch.log(p_left + eps)")},
        twin="seed003_healthy",
        steps=40,
    ),
    Scenario(
        name="seed003_step_bypass",
        bug="optimizer.step() instead of scaler.step(optimizer) under a GradScaler (seed 003)",
        train=partial(train, bug="step_bypass"),
        expect=("TD204",),
        top="TD204",
        where={"source": line_of("BUG: bypasses scaler.step()")},
        twin="seed003_healthy",
        steps=40,
    ),
    Scenario(
        name="seed003_healthy",
        bug="",
        train=train,
        expect=(),
        top=None,
        where={},
        twin=None,
        steps=40,
    ),
)

if __name__ == "__main__":
    train(bug="clip_before_unscale")

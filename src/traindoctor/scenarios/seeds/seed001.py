"""The run of seed report 001 (shared/seeds/001_*.txt), small: a head predicts padded polygons
(pixel units), trained with a box L1 part and a projection-based polygon GIoU part that uses a
0/1 validity mask over the separating axes, defensive `torch.nan_to_num` calls and
`giou1d.clamp(-1, 1)`, as in the report.

The report blamed `nan_to_num` and the mask multiply; neither is the problem (nan_to_num passes
gradient 1 to finite elements, the mask zeroes only padded axes). `bug` plants a real one:
- "clamp_saturates": the union is normalized by the image size but the intersection is not
                     (mixed units), so giou1d is far above 1 and the clamp zeroes the
                     gradient of most axes;
- "detached":        the polygon part is computed from `pred.detach()`: it trains nothing;
- "where_constant":  a guard `torch.where(union > MIN_UNION, giou1d, 0)` compares a 1-D length
                     with an area: it picks the constant branch for almost every axis.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, line_in

V = 6  # vertices per polygon, padded
SCALE = 32.0  # pixel units
MIN_UNION = 16.0**2  # the "where_constant" bug: an area threshold on a 1-D length


def make_data(n: int = 256, seed: int = 1):
    """Convex polygons with 3..V vertices, padded by repeating the last vertex."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(3, V + 1, (n,), generator=g)
    polys = torch.zeros(n, V, 2)
    mask = torch.zeros(n, V)
    for i, k in enumerate(counts.tolist()):
        angles = torch.sort(torch.rand(k, generator=g) * 2 * math.pi).values
        radius = 0.6 + 0.4 * torch.rand(k, generator=g)
        center = torch.rand(2, generator=g) * 2 - 1
        pts = torch.stack([angles.cos(), angles.sin()], -1) * radius[:, None] + center
        polys[i, :k] = pts * SCALE
        polys[i, k:] = pts[-1] * SCALE
        mask[i, :k] = 1.0
    x = polys.flatten(1) + 0.15 * SCALE * torch.randn(n, 2 * V, generator=g)
    return x, polys, mask


class PolyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * V, 2 * V)
        with torch.no_grad():
            self.fc.weight.copy_(0.8 * torch.eye(2 * V) + 0.01 * torch.randn(2 * V, 2 * V))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).view(-1, V, 2)


def polygon_giou(pred, target, mask, bug=None):
    """1 - mean GIoU of the projections on the target's edge normals (the report's MGIoU)."""
    edges = target.roll(-1, 1) - target
    normals = torch.stack([-edges[..., 1], edges[..., 0]], -1)
    axes = torch.nan_to_num(normals / normals.norm(dim=-1, keepdim=True))
    valid = (edges.norm(dim=-1) > 1e-6).float()  # padded (repeated) vertices: no edge
    axes = torch.where(valid[..., None].bool(), axes, axes[:, :1])
    proj_p = torch.einsum("bvd,bad->bav", pred, axes)
    proj_t = torch.einsum("bvd,bad->bav", target, axes)
    p_min, p_max = proj_p.amin(-1), proj_p.amax(-1)
    t_min, t_max = proj_t.amin(-1), proj_t.amax(-1)
    inter = (torch.minimum(p_max, t_max) - torch.maximum(p_min, t_min)).clamp_min(0)
    union = (p_max - p_min) + (t_max - t_min) - inter
    if bug == "clamp_saturates":
        union = union / SCALE  # BUG: union in image units, inter in pixels
    hull = torch.maximum(p_max, t_max) - torch.minimum(p_min, t_min)
    iou = torch.nan_to_num(inter / union, nan=0.0)
    giou1d = iou - (hull - union) / hull
    giou1d = torch.nan_to_num(giou1d, nan=0.0, posinf=1.0, neginf=-1.0)
    if bug == "where_constant":
        giou1d = torch.where(union > MIN_UNION, giou1d, torch.zeros_like(giou1d))  # BUG
    giou1d = giou1d.clamp(-1.0, 1.0)  # "safety" clamp from the report
    giou1d_masked = giou1d * mask * valid  # 0/1 validity mask: padded axes out
    n_valid = (mask * valid).sum(1).clamp(min=1)
    giou = giou1d_masked.sum(1) / n_valid
    return (1 - giou).mean()


def train(steps: int = 30, watch=None, bug: str | None = None):
    torch.manual_seed(0)
    x, polys, mask = make_data()
    model = PolyHead()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        pred = model(x[idx])
        box = F.l1_loss(pred.mean(1), polys[idx].mean(1)) / SCALE
        poly_in = pred.detach() if bug == "detached" else pred  # BUG if detached
        poly = polygon_giou(poly_in, polys[idx], mask[idx], bug=bug)
        loss = box + poly
        if doc is not None:
            doc.log(loss=loss, parts={"box": box, "poly": poly})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def line_of(marker: str) -> str:
    """`seed001.py:LINE` of the first line holding `marker`: where a finding must point."""
    return line_in(__file__, marker)


SCENARIOS = (
    Scenario(
        name="seed001_clamp_saturates",
        bug="Seed 001: giou1d.clamp(-1, 1) saturates for most axes (mixed units): zero gradient",
        train=partial(train, bug="clamp_saturates"),
        expect=("TD301",),
        top="TD301",
        where={"source": line_of("giou1d = giou1d.clamp(-1.0, 1.0)")},
        twin="seed001_healthy",
        steps=30,
    ),
    Scenario(
        name="seed001_detached",
        bug="Seed 001: the polygon GIoU part is computed from pred.detach(): it trains nothing",
        train=partial(train, bug="detached"),
        expect=("TD302",),
        top="TD302",
        where={"source": line_of("loss = box + poly")},
        twin="seed001_healthy",
        steps=30,
    ),
    Scenario(
        name="seed001_where_constant",
        bug="Seed 001: torch.where(union > MIN_UNION, giou1d, 0) picks the constant branch",
        train=partial(train, bug="where_constant"),
        expect=("TD301",),
        top="TD301",
        where={"source": line_of("giou1d = torch.where(union > MIN_UNION")},
        twin="seed001_healthy",
        steps=30,
    ),
    # The same padded-polygon GIoU loss with its 0/1 mask, nan_to_num calls and clamp(-1, 1),
    # none of which blocks the gradient (the clamp is never active).
    Scenario(name="seed001_healthy", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train()

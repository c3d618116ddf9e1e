"""TD704 at warning only where the mix cannot be the model's design, on real runs with the
experiments on: models that mix the batch on purpose stay info (a hand-written batch
normalization, a graph network over a full graph, an in-batch similarity), a reshape across
the batch warns. The check is on the model's output: a contrastive loss is never looked at."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor import experiments
from traindoctor.findings import Severity


class GhostNorm(nn.Module):
    """Batch statistics in train mode, running ones in eval (by hand, not nn.BatchNorm)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(d))

    def forward(self, x):
        if self.training:
            m = x.mean(0)
            self.mean.mul_(0.9).add_(0.1 * m.detach())
            return x - m.view(1, -1).expand_as(x).reshape(x.shape)
        return x - self.mean


class NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(8, 16), GhostNorm(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


class GraphNet(nn.Module):
    """A GCN layer over one full graph: each node's output reads its neighbours."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x, adj):
        return self.b(adj @ torch.relu(self.a(x)))


class Similarity(nn.Module):
    """CLIP-style logits (B, B) inside the model: in-batch negatives by design."""

    def __init__(self) -> None:
        super().__init__()
        self.f, self.g = nn.Linear(8, 16), nn.Linear(8, 16)

    def forward(self, x):
        u, v = F.normalize(self.f(x), dim=1), F.normalize(self.g(x.flip(1)), dim=1)
        return u @ v.t() * 10


class Scrambled(nn.Module):
    """The bug: (B, 8) viewed as (8, B) and back: each row mixes every example."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(h.t().reshape(h.shape[0], -1))


def _run(model, tmp_path, steps: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    adj = (torch.rand(16, 16, generator=g) < 0.3).float() + torch.eye(16)
    adj = adj / adj.sum(1, keepdim=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with experiments.enable():
        doc = td.watch(model, opt, out_dir=tmp_path, console=False)
        for _ in range(steps):
            opt.zero_grad()
            if isinstance(model, GraphNet):
                loss = F.cross_entropy(model(x, adj), y)
            elif isinstance(model, Similarity):
                loss = F.cross_entropy(model(x), torch.arange(16))  # InfoNCE-style targets
            else:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        report = doc.close()
    assert not report.internal_errors, report.internal_errors
    return next(f for f in report.findings if f.code == "TD704")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "model, why",
    [
        (NormNet, "eval mode the examples are independent"),
        (GraphNet, "matmul"),  # and its other tensor input, the adjacency
        (Similarity, "matmul"),
    ],
    ids=["hand-written-batchnorm", "graph-network", "in-batch-similarity"],
)
def test_mixing_by_design_stays_info(model, why, tmp_path):
    torch.manual_seed(0)
    f = _run(model(), tmp_path)
    assert "mixes the examples" in f.title, f.title
    assert f.severity is Severity.INFO and why in f.cause, (f.severity, f.cause)


def test_a_reshape_across_the_batch_warns(tmp_path):
    torch.manual_seed(0)
    f = _run(Scrambled(), tmp_path)
    assert f.severity is Severity.WARNING, (f.title, f.cause, f.evidence)
    assert f.evidence["mixes_in_eval"] is True and f.where.op

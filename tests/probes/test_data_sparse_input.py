"""A sparse tensor among the forward's inputs (pygcn's adjacency through torch.spmm) has no data
pointer: the data probe must skip it, not record an internal error and lose its rules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import traindoctor as td


class _GCN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(16, 32)
        self.w2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = F.relu(torch.spmm(adj, self.w1(x)))
        return F.log_softmax(torch.spmm(adj, self.w2(h)), dim=1)


def test_sparse_adjacency_input_records_no_internal_error(tmp_path) -> None:
    torch.manual_seed(0)
    n = 100
    x = torch.randn(n, 16)
    idx = torch.randint(0, n, (2, 400))
    adj = torch.sparse_coo_tensor(idx, torch.ones(400), (n, n)).coalesce()
    y = torch.randint(0, 4, (n,))
    model = _GCN()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(12):
            opt.zero_grad()
            loss = F.nll_loss(model(x, adj)[:70], y[:70])
            loss.backward()
            opt.step()
    errors = doc.report.to_dict().get("internal_errors", [])
    assert not [e for e in errors if "data" in e["where"]], errors

"""TD506 on nll_loss fed log-probabilities normalized over the wrong dim and then indexed.

pytorch/examples' GAT classifies all the nodes of a graph at once and trains on the nodes a
mask picks: `loss = criterion(output[mask_train], target[mask_train])`. With the model's
`F.log_softmax(x, dim=1)` written as `dim=0`, each class column is normalized over the 2708
nodes: every value is <= 0 (no raw-score alarm), and the mask's index hides the dim from
TD508's graph walk. The rows' logsumexp over the classes says it: ~-6 instead of 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests._loop import watch


def _graph_classifier(tmp_path, dim: int, steps: int = 25):
    torch.manual_seed(0)
    n, features, classes = 300, 16, 5
    x = torch.randn(n, features)
    y = (x[:, :classes]).argmax(1)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:60] = True
    model = nn.Sequential(nn.Linear(features, 32), nn.ELU(), nn.Linear(32, classes))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    doc = watch(model, opt, tmp_path)
    for _ in range(steps):
        model.train()
        opt.zero_grad()
        out = F.log_softmax(model(x), dim=dim)
        loss = F.nll_loss(out[mask], y[mask])
        loss.backward()
        opt.step()
    doc.close()
    return doc


def test_log_softmax_over_the_nodes_then_masked_is_caught(tmp_path):
    doc = _graph_classifier(tmp_path, dim=0)
    f = next(f for f in doc.report.findings if f.code == "TD506")
    assert f.severity.value == "error"
    assert "not normalized over its 5 classes" in f.title
    # log(5/300) ~ -4.1: every row sums to ~5/300 in probability
    assert 3.0 < f.evidence["min_row_logsumexp_deviation"] < 5.0


def test_log_softmax_over_the_classes_is_silent(tmp_path):
    doc = _graph_classifier(tmp_path, dim=1)
    assert "TD506" not in [f.code for f in doc.report.findings]

"""TD508 on a label-smoothing KLDiv loss whose log_softmax normalized the time dim.

dreamgonfly/transformer-pytorch (and the Annotated Transformer's `LabelSmoothing`) score a
(B, T, V) decoder output with `KLDivLoss(reduction='sum')` against smoothed target rows, after
`log_softmax` and a view to (B*T, V); the pad positions' target rows are zeroed. Written
`nn.LogSoftmax(dim=1)`, each position's scores are normalized across the sentence. Before:
missed (the zeroed pad rows made the target no distribution along any dim, and the view merged
the normalized dim away, a case judged for index targets only). The twin with `dim=-1` is
silent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests._loop import watch

V, PAD = 12, 0


class Smoothing(nn.Module):
    def __init__(self, dim: int, eps: float = 0.1):
        super().__init__()
        self.dim, self.eps = dim, eps
        row = torch.full((V,), eps / (V - 2))
        row[PAD] = 0
        self.register_buffer("row", row.unsqueeze(0))

    def forward(self, out, y):
        b, t, v = out.shape
        logp = F.log_softmax(out, dim=self.dim).view(b * t, v)
        flat = y.view(b * t)
        target = self.row.repeat(flat.numel(), 1)
        target.scatter_(1, flat.unsqueeze(1), 1 - self.eps)
        target.masked_fill_((flat == PAD).unsqueeze(1), 0)
        return F.kl_div(logp, target, reduction="sum")


def _decoder(tmp_path, dim: int, steps: int = 12):
    torch.manual_seed(0)
    src = torch.randint(1, V, (64, 7))
    src[::3, 5:] = PAD  # padded sentences
    model = nn.Sequential(nn.Embedding(V, 16), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, V))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = Smoothing(dim)
    doc = watch(model, opt, tmp_path)
    for i in range(steps):
        x = src[(i % 4) * 16 : (i % 4 + 1) * 16]
        opt.zero_grad()
        loss = loss_fn(model(x), x) / (x != PAD).sum()
        loss.backward()
        opt.step()
    doc.close()
    return doc


def test_log_softmax_over_time_into_label_smoothing_kl_is_caught(tmp_path):
    doc = _decoder(tmp_path, dim=1)
    f = next(f for f in doc.report.findings if f.code == "TD508")
    assert f.severity.value in ("error", "warning")
    assert f.evidence["softmax_dim"] == 1 and f.evidence["loss_fn"] == "kl_div"


def test_log_softmax_over_the_vocabulary_is_silent(tmp_path):
    doc = _decoder(tmp_path, dim=-1)
    assert "TD508" not in [f.code for f in doc.report.findings]

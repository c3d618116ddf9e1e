"""A batch the model takes as a dict (or any object): nothing can be zeroed, so the
input-independent baseline is not measured, instead of reading an unchanged output as "the
model ignores its input" (which TD702 would take as decisive)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor import experiments
from traindoctor.findings import Severity


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, batch):
        return self.lin(batch["x"])


def test_dict_batch_is_not_measured(tmp_path):
    torch.manual_seed(0)
    model = DictModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with experiments.enable():
        doc = td.watch(model, opt, out_dir=tmp_path, console=False)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model({"x": x}), y).backward()
            opt.step()
        report = doc.close()
    events = {e["name"]: e for e in report.timeline.events("experiment")}
    assert events["input_independent"]["verdict"] == "not_measured"
    assert "dict" in events["input_independent"]["reason"]
    assert not any(f.code == "TD703" for f in report.findings)
    assert all(f.severity is Severity.INFO for f in report.findings if f.code.startswith("TD7"))

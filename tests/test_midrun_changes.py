"""Structural changes in the middle of a run are found and dated from when they happened."""

from __future__ import annotations

import torch
from torch import nn

import traindoctor as td

torch.set_num_threads(1)


def _train(model, opt, steps, at_step=None, change=None, doc=None):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    for step in range(1, steps + 1):
        if step == at_step:
            change()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


def test_module_replaced_mid_run_is_found_and_dated(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def replace_head():
        model[2] = nn.Linear(16, 3)  # after the optimizer was built: it keeps the old tensors

    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        _train(model, opt, 60, at_step=20, change=replace_head)
    report = doc.report
    stale, missing = report.get("TD111"), report.get("TD103")
    assert stale is not None and missing is not None
    assert set(missing.where.params) == {"2.weight", "2.bias"}
    # Seen on the first sampled step after the change, not at step 1.
    assert 20 <= stale.step <= 40 and 20 <= missing.step <= 40


def test_progressive_unfreezing_with_add_param_group_is_healthy(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD(model[2].parameters(), lr=0.1)

    def unfreeze():
        model[0].requires_grad_(True)
        opt.add_param_group({"params": model[0].parameters(), "lr": 0.01})

    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        _train(model, opt, 60, at_step=20, change=unfreeze)
    assert [f.code for f in doc.report.findings if f.severity.value != "info"] == []

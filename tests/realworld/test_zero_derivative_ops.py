"""TD301 and ops whose derivative is 0 everywhere (sign, round, floor): such an op blocks
nothing when the value it reads also reaches the loss another way. YOLOv1's width/height term
`sign(x) * sqrt(abs(x) + eps)` (MingLongSu/YOLOv1-Implementation, loss.py) was an ERROR,
"`sign` blocks 100% of the loss gradient", while its loss fell 0.37 -> 0.024; a rounded
prediction that is the loss's only path to the model still is one."""

from __future__ import annotations

import pytest

from tests.cli.conftest import run_scripts

YOLO_WH = """
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(256, 8)
wh = torch.rand(256, 2) * 0.5 + 0.05
for step in range(60):
    pred = model(x)
    pred_t = torch.sign(pred) * torch.sqrt(torch.abs(pred + 1e-6))
    loss = ((pred_t - torch.sqrt(wh)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

# As YOLOv1's loss writes it: the slice taken twice, written back in place.
YOLO_WH_INPLACE = """
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(256, 8)
boxes = torch.rand(256, 4) * 0.5 + 0.05
for step in range(60):
    pred = model(x) * 1.0
    pred[..., 2:4] = torch.sign(pred[..., 2:4]) * torch.sqrt(torch.abs(pred[..., 2:4] + 1e-6))
    target = boxes.clone()
    target[..., 2:4] = torch.sqrt(target[..., 2:4])
    loss = torch.nn.functional.mse_loss(pred, target, reduction="sum") / 256
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

ROUNDED = """
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(40):
    x = torch.randn(64, 8)
    y = (x[:, :1] * 3).round()
    count = model(x).round()  # ROUND: the loss's only path to the model
    loss = ((count - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(
        tmp_path_factory,
        {"yolo_wh": YOLO_WH, "yolo_wh_inplace": YOLO_WH_INPLACE, "rounded": ROUNDED},
    )


@pytest.mark.parametrize("name", ["yolo_wh", "yolo_wh_inplace"])
def test_sign_beside_another_path_is_not_a_block(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    assert "TD301" not in r.codes(), r


def test_a_rounded_prediction_is_still_a_block(runs):
    r = runs["rounded"]
    f = r.finding("TD301")
    assert f["severity"] == "error", f
    assert f["where"]["op"] == "round", f

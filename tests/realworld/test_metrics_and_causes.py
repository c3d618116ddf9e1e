"""Metrics computed by the script itself and findings measured after a blow-up, on standalone
scripts written the way users write them, run unchanged under the zero-code `traindoctor run`.

- TD406: pixel-wise AUROC with scikit-learn on masks binarized with a 0-255 threshold (every
  target 0; seed report 004), and torchmetrics' functional `binary_auroc` on validation labels
  that are all 0; the same scripts with both classes present stay silent.
- Causes before consequences: a learning rate x1000 blows the weights up in one update; the
  report must not call it poor initialization (measured before the first update, TD209 is not
  raised on a default init) and what it measured after the blow-up links to it.
- TD209 still fires on a head initialized with std 1 (measured on the first forward, which
  zero-code mode sees before its lazy attach).
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import line_of, loud, run_scripts

SKLEARN_PIXELS = """
import torch
import torch.nn as nn
from sklearn.metrics import f1_score, roc_auc_score

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
images = torch.rand(32, 3, 16, 16)
raw_masks = (images[:, :1] > 0.5).float()          # masks stored as 0/1
masks = (raw_masks > THRESHOLD).float()


def compute_pixel_metrics(logits, target):
    probs = torch.sigmoid(logits).detach().flatten().numpy()
    y = target.flatten().numpy().astype(int)
    try:
        auroc = roc_auc_score(y, probs)  # AUROC
    except ValueError:
        auroc = 0.0
    return {"auroc": auroc, "f1": f1_score(y, probs > 0.5, zero_division=0)}


for epoch in range(4):
    for i in range(0, 32, 8):
        x, m = images[i : i + 8], masks[i : i + 8]
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), m)
        loss.backward()
        opt.step()
    with torch.no_grad():
        net.eval()
        metrics = compute_pixel_metrics(net(images[:8]), masks[:8])
        net.train()
    print(epoch, round(loss.item(), 4), metrics)
"""

TORCHMETRICS_FUNCTIONAL = """
import torch
import torch.nn as nn
from torchmetrics.functional.classification import binary_auroc

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(256, 10)
y = (x[:, 0] > 0).float()
val_x, val_y = x[:64], VAL_LABELS
for epoch in range(5):
    for i in range(0, 256, 32):
        opt.zero_grad()
        out = model(x[i : i + 32]).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(out, y[i : i + 32])
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = model(val_x).squeeze(1).sigmoid()
        print(epoch, binary_auroc(p, val_y.long()).item())  # AUROC
"""

LR_BLOWUP = """
import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
)
optimizer = torch.optim.SGD(model.parameters(), lr=LR)
g = torch.Generator().manual_seed(1)
X = torch.randn(2048, 20, generator=g)
Y = (X @ torch.randn(20, 5, generator=g)).argmax(1)
for epoch in range(2):
    for i in range(0, 2048, 64):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(X[i : i + 64]), Y[i : i + 64])
        loss.backward()
        optimizer.step()
    print(epoch, loss.item())
"""

HEAD_STD1 = """
import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))
nn.init.normal_(model[2].weight, std=1.0)  # HEAD
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
X, Y = torch.randn(1024, 32), torch.randint(0, 10, (1024,))
for step in range(40):
    i = (step * 64) % 1024
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(X[i : i + 64]), Y[i : i + 64])
    loss.backward()
    optimizer.step()
"""

SCRIPTS = {
    "sklearn_bug": SKLEARN_PIXELS.replace("THRESHOLD", "127"),
    "sklearn_ok": SKLEARN_PIXELS.replace("THRESHOLD", "0.5"),
    "tm_bug": TORCHMETRICS_FUNCTIONAL.replace("VAL_LABELS", "torch.zeros(64)"),
    "tm_ok": TORCHMETRICS_FUNCTIONAL.replace("VAL_LABELS", "y[:64]"),
    "blowup": LR_BLOWUP.replace("LR", "50.0"),
    "normal_lr": LR_BLOWUP.replace("LR", "0.05"),
    "head_std1": HEAD_STD1,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, SCRIPTS)


@pytest.mark.parametrize("name", ["sklearn_bug", "tm_bug"])
def test_one_class_auroc_called_by_the_script_is_td406_at_its_line(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    f = r.finding("TD406")
    assert f["severity"] == "warning", f
    line = line_of(r.cwd / "train.py", "# AUROC")
    assert f["where"]["source"] == f"train.py:{line}", f
    assert "no positive target" in f["title"], f
    assert not r.findings()["internal_errors"], r.findings()["internal_errors"]


@pytest.mark.parametrize("name", ["sklearn_ok", "tm_ok"])
def test_auroc_on_both_classes_is_silent(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    assert "TD406" not in r.codes(), r.findings()["findings"]
    assert loud(r) == [], r.findings()["findings"]


def test_blowup_is_not_called_poor_initialization_and_its_aftermath_links_to_it(runs):
    r = runs["blowup"]
    findings = r.findings()["findings"]
    codes = [f["code"] for f in findings]
    assert "TD209" not in codes, findings  # the init is PyTorch's default: measured at step 1
    assert "TD303" not in codes, findings  # NaN pre-activations are not dead units
    assert codes[0] in {"TD201", "TD202", "TD203", "TD206", "TD210"}, codes
    for f in findings:
        if f["code"] in {"TD104", "TD107", "TD108", "TD207", "TD303", "TD304"}:
            assert "after_blowup" in f["evidence"], f


def test_normal_lr_has_no_init_or_blowup_finding(runs):
    r = runs["normal_lr"]
    assert loud(r) == [], r.findings()["findings"]


def test_large_head_init_is_measured_before_the_first_update(runs):
    r = runs["head_std1"]
    f = r.finding("TD209")
    assert f["step"] == 1, f
    assert f["where"]["module"] == "2", f

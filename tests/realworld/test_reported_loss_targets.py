"""Real reports of binary-segmentation and recommender training that "does not learn" or whose
loss goes negative, each written as the reporter's code (made runnable on small synthetic data)
and run unchanged under the zero-code `traindoctor run`, beside the fixed twin the thread's
answer gives, which must stay silent (no error, no warning).

Caught (a right code in the top 3 errors/warnings, its cause naming the real cause):
- TD511, BCEWithLogitsLoss targets outside [0, 1] (missed before: added to TD511 for these):
  MontaEllis/Pytorch-Medical-Segmentation#8 (3-D labels read from a png as 0/255),
  bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets#18 (the mask goes through the image's
  Normalize(0.5, 0.5) into [-1, 1]), milesial/Pytorch-UNet#65 ported to a LightningModule
  (masks 0/255, only the images normalized): the loss goes negative and keeps falling.
- TD506, a sigmoid in front of BCEWithLogitsLoss: yudi-mars/daisyRec#15 (a point-wise matrix
  factorization), avBuffer/UNet3plus_pth#23 (a UNet3+ ending in F.sigmoid).

Not a miss: milesial/Pytorch-UNet#78 (BCELoss on 0/255 masks, the loss negative) raises in
torch 2.x ("all elements of target should be between 0 and 1"), so the run stops at once and
the report names the exception and the line.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import line_of, loud, reported_batch

pytestmark = pytest.mark.slow


# MontaEllis/Pytorch-Medical-Segmentation#8: BCEWithLogitsLoss is negative; the labels are a png
# read as 0/255, never normalized.
BCELOGITS_PNG_LABELS = """
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
rng = np.random.RandomState(0)
vol = rng.rand(48, 1, 8, 16, 16).astype(np.float32)
label_png = ((vol > 0.6) * 255).astype(np.uint8)  # LABELS
train_set = TensorDataset(torch.from_numpy(vol), torch.from_numpy(label_png))
train_loader = DataLoader(train_set, batch_size=4, shuffle=True)


class UNet3D(nn.Module):
    def __init__(self, in_channels=1, out_channels=1):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(in_channels, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU())
        self.out = nn.Conv3d(8, out_channels, 1)

    def forward(self, x):
        return self.out(self.enc(x))


model = UNet3D()
criterion = nn.BCEWithLogitsLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
for epoch in range(3):
    for i, (x, y) in enumerate(train_loader):
        x = x.float()
        y = y.float()
        outputs = model(x)
        loss = criterion(outputs, y)  # LOSS
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(epoch, loss.item())
"""

# bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets#18: the mask goes through the same
# Normalize((0.5,), (0.5,)) as the image, so the BCE targets are in [-1, 1]: negative loss.
MASK_NORMALIZED = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, DataLoader


class Images_Dataset(Dataset):
    def __init__(self, n=96):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 16, 16, generator=g)
        self.labels = (self.images.mean(1, keepdim=True) > 0.5).float()
        self.tx = lambda t: (t - 0.5) / 0.5  # transforms.Normalize(mean=[0.5]*3, std=[0.5]*3)
        self.lx = lambda t: (t - 0.5) / 0.5  # MASKTX  transforms.Normalize(mean=[0.5], std=[0.5])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.tx(self.images[i]), self.lx(self.labels[i])


def calc_loss(prediction, target, bce_weight=0.5):
    bce = F.binary_cross_entropy_with_logits(prediction, target)  # LOSS
    prediction = torch.sigmoid(prediction)
    inter = (prediction * target).sum()
    dice = 1 - (2.0 * inter + 1.0) / (prediction.sum() + target.sum() + 1.0)
    return bce * bce_weight + dice * (1 - bce_weight)


model_test = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 1, 1),
)
torch.manual_seed(0)
opt = torch.optim.Adam(model_test.parameters(), lr=1e-3)
train_loader = DataLoader(Images_Dataset(), batch_size=8, shuffle=True)
for i in range(3):
    train_loss = 0.0
    model_test.train()
    for x, y in train_loader:
        opt.zero_grad()
        y_pred = model_test(x)
        lossT = calc_loss(y_pred, y)
        train_loss += lossT.item() * x.size(0)
        lossT.backward()
        opt.step()
    print("epoch", i, train_loss / len(train_loader.dataset))
"""

# yudi-mars/daisyRec#15: the point-wise recommender applies a sigmoid to its score, then the
# loss is BCEWithLogitsLoss, which applies its own: "Otherwise loss does not converge".
REC_SIGMOID_BCELOGITS = """
import torch
import torch.nn as nn
import torch.utils.data as data


class PointMF(nn.Module):
    def __init__(self, user_num, item_num, factor_num=16):
        super().__init__()
        self.embed_user = nn.Embedding(user_num, factor_num)
        self.embed_item = nn.Embedding(item_num, factor_num)
        nn.init.normal_(self.embed_user.weight, std=0.01)
        nn.init.normal_(self.embed_item.weight, std=0.01)

    def forward(self, user, item):
        pred = (self.embed_user(user) * self.embed_item(item)).sum(dim=-1)
        return torch.sigmoid(pred)  # SIGMOID


torch.manual_seed(0)
U, I = 200, 300
users = torch.randint(0, U, (4000,))
items = torch.randint(0, I, (4000,))
taste = torch.randn(U, 4) @ torch.randn(4, I)
labels = (taste[users, items] > 0).float()
loader = data.DataLoader(data.TensorDataset(users, items, labels), batch_size=128, shuffle=True)
model = PointMF(U, I)
criterion = nn.BCEWithLogitsLoss(reduction="sum")
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
for epoch in range(2):
    model.train()
    for user, item, label in loader:
        model.zero_grad()
        prediction = model(user, item)
        loss = criterion(prediction, label)  # LOSS
        loss.backward()
        optimizer.step()
"""

# avBuffer/UNet3plus_pth#23: the network ends in F.sigmoid(d1) and train.py uses
# BCEWithLogitsLoss: "you're applying sigmoid twice and the loss may not decrease".
UNET3P_SIGMOID_BCELOGITS = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import optim


class UNet_3Plus(nn.Module):
    def __init__(self, in_channels=3, n_classes=1):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.outconv1 = nn.Conv2d(48, n_classes, 3, padding=1)

    def forward(self, inputs):
        h1 = self.conv1(inputs)
        h2 = self.conv2(F.max_pool2d(h1, 2))
        hd = torch.cat([h1, F.interpolate(h2, scale_factor=2, mode="bilinear")], 1)
        d1 = self.outconv1(hd)
        return F.sigmoid(d1)  # SIGMOID


def train_net(net, epochs=3, batch_size=4, lr=0.01):
    g = torch.Generator().manual_seed(1)
    imgs_all = torch.rand(32, 3, 16, 16, generator=g)
    masks_all = (imgs_all[:, 1:2] > 0.5).float()
    optimizer = optim.RMSprop(net.parameters(), lr=lr, weight_decay=1e-8, momentum=0.9)
    criterion = nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        net.train()
        for i in range(0, 32, batch_size):
            imgs, true_masks = imgs_all[i:i + batch_size], masks_all[i:i + batch_size]
            masks_pred = net(imgs)
            loss = criterion(masks_pred, true_masks)  # LOSS
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_value_(net.parameters(), 0.1)
            optimizer.step()


torch.manual_seed(0)
train_net(UNet_3Plus(in_channels=3, n_classes=1))
"""

# milesial/Pytorch-UNet#65 ("Negative Loss"; the maintainer: the *targets* must be between 0 and
# 1, the normalize function only applies to input images), the UNet's BCEWithLogitsLoss
# (n_classes=1) trained from a LightningModule: the masks are loaded as 0/255.
LIGHTNING_UNET_MASKS_255 = """
import lightning.pytorch as L
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class CarvanaDataset(Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 16, 16), generator=g).float()
        self.masks = (self.images[:, 0] > 127).float() * 255  # MASK

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i] / 255  # the normalize function: images only
        return {"image": img, "mask": self.masks[i].unsqueeze(0)}


class UNetModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 1, 1),
        )
        self.criterion = nn.BCEWithLogitsLoss()

    def training_step(self, batch, batch_idx):
        masks_pred = self.net(batch["image"])
        loss = self.criterion(masks_pred, batch["mask"])  # LOSS
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.RMSprop(self.parameters(), lr=1e-4, weight_decay=1e-8, momentum=0.9)


torch.manual_seed(0)
loader = DataLoader(CarvanaDataset(), batch_size=8, shuffle=True)
trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(UNetModule(), loader)
"""


def _twins() -> dict[str, str]:
    return {
        "bcelogits_png_labels": _fixed(
            BCELOGITS_PNG_LABELS, [("y = y.float()", "y = y.float() / 255")]
        ),
        "mask_normalized": _fixed(
            MASK_NORMALIZED,
            [("self.lx = lambda t: (t - 0.5) / 0.5  # MASKTX", "self.lx = lambda t: t  # MASKTX")],
        ),
        "rec_sigmoid_bcelogits": _fixed(
            REC_SIGMOID_BCELOGITS,
            [("return torch.sigmoid(pred)  # SIGMOID", "return pred  # SIGMOID")],
        ),
        "unet3p_sigmoid_bcelogits": _fixed(
            UNET3P_SIGMOID_BCELOGITS, [("return F.sigmoid(d1)  # SIGMOID", "return d1  # SIGMOID")]
        ),
        "lightning_unet_masks_255": _fixed(
            LIGHTNING_UNET_MASKS_255, [("* 255  # MASK", "  # MASK")]
        ),
    }


def _fixed(text: str, edits: list[tuple[str, str]]) -> str:
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


BUGGY = {
    "bcelogits_png_labels": BCELOGITS_PNG_LABELS,
    "mask_normalized": MASK_NORMALIZED,
    "rec_sigmoid_bcelogits": REC_SIGMOID_BCELOGITS,
    "unet3p_sigmoid_bcelogits": UNET3P_SIGMOID_BCELOGITS,
    "lightning_unet_masks_255": LIGHTNING_UNET_MASKS_255,
}
HEALTHY = {f"{name}_fixed": text for name, text in _twins().items()}


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def _top3(result, code):
    top = loud(result)[:3]
    assert code in top, f"{code} not in the top 3 {top}\n{result}"
    return result.finding(code)


@pytest.mark.parametrize(
    ("name", "low", "high", "fix"),
    [
        ("bcelogits_png_labels", 0, 255, "/ 255"),
        ("mask_normalized", -1, 1, "Normalize"),
        ("lightning_unet_masks_255", 0, 255, "/ 255"),
    ],
)
def test_binary_targets_outside_0_1(runs, name, low, high, fix):
    r = runs[name]
    assert r.rc == 0, r
    f = _top3(r, "TD511")
    assert f["severity"] == "error"
    assert f["where"]["source"] == f"train.py:{line_of(r.cwd / 'train.py', '# LOSS')}"
    assert (f["evidence"]["target_min"], f["evidence"]["target_max"]) == (low, high)
    assert f["evidence"]["loss_fn"] == "binary_cross_entropy_with_logits"
    assert "no minimum" in f["cause"] and fix in f["fix"]


@pytest.mark.parametrize("name", ["rec_sigmoid_bcelogits", "unet3p_sigmoid_bcelogits"])
def test_sigmoid_before_bce_with_logits(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    f = _top3(r, "TD506")
    assert f["severity"] == "error"
    assert f["where"]["source"] == f"train.py:{line_of(r.cwd / 'train.py', '# LOSS')}"
    assert "Sigmoid" in f["title"]

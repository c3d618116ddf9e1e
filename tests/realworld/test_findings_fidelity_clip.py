"""CLIP-like contrastive training with a learned temperature (openai/CLIP's and
mlfoundations/open_clip's `logit_scale = log(1/0.07)`, exp()'d and multiplied into the
cosine-similarity logits, clamped after the step): the cross-entropy at init is above ln B and
the op that holds the temperature multiplies its input by ~14, both by design. TD209 warned
on both ("final layer `head` ... 14.1x its input's", "cross-entropy at init is 7.73"); a
learned scalar is a temperature, not a fan-in init. Run unchanged under `traindoctor run`.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import loud, run_scripts

pytestmark = pytest.mark.slow

CLIP = """
import math
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
STYLE = "{style}"


class Tower(nn.Module):
    def __init__(self, d_in, width, d_out):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.ln = nn.LayerNorm(width)
        self.proj = nn.Linear(width, d_out, bias=False)

    def forward(self, x):
        return self.proj(self.ln(F.gelu(self.fc1(x))))


class ContrastiveHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    def forward(self, a, b):
        return self.logit_scale.exp() * a @ b.T


class CLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = Tower(48, 64, 16)
        self.transformer = Tower(32, 64, 16)
        if STYLE == "head":
            self.head = ContrastiveHead()
        else:
            self.text_projection = nn.Parameter(torch.randn(16, 16) * 16 ** -0.5)
            self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    def forward(self, image, text):
        img = F.normalize(self.visual(image), dim=-1)
        if STYLE == "head":
            return self.head(img, F.normalize(self.transformer(text), dim=-1))
        txt = F.normalize(self.transformer(text) @ self.text_projection, dim=-1)
        return img, txt, self.logit_scale.exp()


class ClipLoss(nn.Module):
    def forward(self, image_features, text_features, logit_scale):
        logits_per_image = logit_scale * image_features @ text_features.T
        labels = torch.arange(image_features.shape[0])
        return (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)
        ) / 2


z = torch.randn(1024, 16)
images = z @ torch.randn(16, 48) + 0.1 * torch.randn(1024, 48)
texts = z @ torch.randn(16, 32) + 0.1 * torch.randn(1024, 32)
loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(images, texts), batch_size=32, shuffle=True, drop_last=True
)
model = CLIP()
loss_fn = ClipLoss()
opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
for epoch in range(2):
    for im, tx in loader:
        if STYLE == "head":
            logits = model(im, tx)
            labels = torch.arange(im.shape[0])
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        else:
            loss = loss_fn(*model(im, tx))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            scale = model.head.logit_scale if STYLE == "head" else model.logit_scale
            scale.clamp_(0, math.log(100))
    print(epoch, loss.item())
"""

PROGRAMS = {
    "clip_head_holds_temperature": CLIP.replace("{style}", "head"),
    "open_clip_root_logit_scale": CLIP.replace("{style}", "root"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, PROGRAMS)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_learned_temperature_is_no_poor_init(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    codes = [f["code"] for f in r.findings()["findings"]]
    assert "TD209" not in codes, r
    assert loud(r) == [], r

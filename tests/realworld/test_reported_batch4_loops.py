"""Real reports of training loops that left part of the model untrained (fourth batch): a
validation helper that leaves the model in eval mode for the rest of the epoch, a head
unfrozen after the optimizer was built from the trainable params, a key padding mask with its
meaning inverted. Each is written as the reporter's code (made runnable on small synthetic
data) and run unchanged under the zero-code `traindoctor run`, beside the fixed twin, which
must stay silent (no error, no warning).

- wkentaro/pytorch-fcn#57 and #56 (https://github.com/wkentaro/pytorch-fcn/issues/57): the
  Trainer validates every `interval` iterations inside the epoch; validate() calls
  `self.model.eval()` and never switches back, so the rest of the epoch trains with BatchNorm
  on running statistics and dropout off. Caught before and after: TD402 error, "the whole
  model trained in eval mode" from step 1.
- facebookresearch/detectron2#2486 (https://github.com/facebookresearch/detectron2/issues/2486):
  `unfreeze_box_head()` at iteration 500 "does not take effect": build_optimizer skipped the
  params that did not require grad when it ran. Caught before and after: TD103 error, the
  box head's 2 params get gradients no optimizer applies.
- mlwithme/TransformerTranslation#2 (https://github.com/mlwithme/TransformerTranslation/issues/2)
  and lucidrains/feedback-transformer-pytorch#6: a padding mask built as `src != PAD` (True on
  the real tokens) passed as `src_key_padding_mask`, where True means "ignore": every token
  attends to the padding only (accuracy 0.79 against 1.00 fixed, 3 epochs of 2048). Only a
  symptom is reported: TD104 error, the first attention's in_proj_weight never changes. Before
  (at 0614f81) its cause blamed "an update below the float resolution" and its fix said
  "raise the learning rate"; after, it states what was measured: a gradient norm of at most
  2.5e-18 at every observed step (the padding's embedding rows are zeros, so the attention
  reads nothing), which no lr would move. The mask itself is not named: a known partial miss.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, reported_batch, top3

pytestmark = pytest.mark.slow


FCN_EVAL_LEFT = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
g = torch.Generator().manual_seed(3)
imgs = torch.randn(640, 3, 16, 16, generator=g)
lbl = (imgs[:, 0] + 0.5 * imgs[:, 1] > 0.3).long()  # per-pixel 2-class segmentation


class FCN(nn.Module):
    def __init__(self, n_class=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout2d(0.2)
        self.score = nn.Conv2d(16, n_class, 1)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.drop(F.relu(self.bn2(self.conv2(h))))
        return self.score(h)


class Trainer:
    def __init__(self, model, optim, train, val, interval):
        self.model, self.optim, self.train, self.val = model, optim, train, val
        self.interval = interval
        self.iteration = 0

    def validate(self):
        self.model.eval()
        with torch.no_grad():
            x, t = self.val
            loss = F.cross_entropy(self.model(x), t)
        print(f"iter {self.iteration} val loss {loss.item():.3f}")
        # RETURN

    def train_epoch(self):
        self.model.train()
        x_all, t_all = self.train
        for i in range(0, len(x_all), 16):
            if self.iteration % self.interval == 0:
                self.validate()
            x, t = x_all[i:i + 16], t_all[i:i + 16]
            self.optim.zero_grad()
            loss = F.cross_entropy(self.model(x), t)
            loss.backward()
            self.optim.step()
            self.iteration += 1


model = FCN()
optim = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
trainer = Trainer(model, optim, (imgs[:512], lbl[:512]), (imgs[512:], lbl[512:]), interval=10)
for epoch in range(3):
    trainer.train_epoch()
"""

D2_UNFREEZE_LATE = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
g = torch.Generator().manual_seed(4)
X = torch.randn(4096, 32, generator=g)
Y = (X[:, :8] @ torch.randn(8, 5, generator=g)).argmax(1)


class GeneralizedRCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
        self.box_head = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.box_predictor = nn.Linear(64, 5)
        for p in self.box_head.parameters():
            p.requires_grad = False

    def unfreeze_box_head(self):
        for p in self.box_head.parameters():
            p.requires_grad = True
        print("Unfreeze roi_box_head parameters")

    def forward(self, x):
        return self.box_predictor(self.box_head(self.backbone(x)))


def build_optimizer(model, base_lr):
    params = []
    for key, value in model.named_parameters():
        if not value.requires_grad:
            continue
        params += [{"params": [value], "lr": base_lr}]
    return torch.optim.SGD(params, base_lr, momentum=0.9)


model = GeneralizedRCNN()
optimizer = build_optimizer(model, 0.02)
for iteration in range(300):
    if iteration == 100:
        model.unfreeze_box_head()
        # REBUILD
    idx = torch.randint(0, len(X), (32,), generator=g)
    loss = F.cross_entropy(model(X[idx]), Y[idx])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if iteration % 50 == 0:
        print(iteration, loss.item())
"""

PADMASK_INVERTED = """
import torch
import torch.nn as nn

torch.manual_seed(0)
g = torch.Generator().manual_seed(5)
PAD, VOCAB, L = 0, 50, 20
N = 1024
lengths = torch.randint(6, L + 1, (N,), generator=g)
src = torch.randint(1, VOCAB, (N, L), generator=g)
src[torch.arange(L)[None, :] >= lengths[:, None]] = PAD
labels = ((src == 7).any(1) | (src == 11).any(1)).long()  # does the sentence hold token 7 or 11


class SentenceClassifier(nn.Module):
    def __init__(self, d_model=64):
        super().__init__()
        self.PAD_IDX = PAD
        self.embedding = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        layer = nn.TransformerEncoderLayer(d_model, 4, 128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(d_model, 2)

    def forward(self, src):
        padding_mask = src != self.PAD_IDX  # MASK
        h = self.encoder(self.embedding(src), src_key_padding_mask=padding_mask)
        keep = (src != self.PAD_IDX).unsqueeze(-1).float()
        return self.fc((h * keep).sum(1) / keep.sum(1))


model = SentenceClassifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()
for epoch in range(2):
    perm = torch.randperm(N, generator=g)
    for i in range(0, N, 64):
        idx = perm[i:i + 64]
        optimizer.zero_grad()
        loss = criterion(model(src[idx]), labels[idx])
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model.eval()
        acc = (model(src).argmax(1) == labels).float().mean().item()
        model.train()
    print(f"epoch {epoch} loss {loss.item():.3f} acc {acc:.3f}")
"""


BUGGY = {
    "fcn_eval_left": FCN_EVAL_LEFT,
    "d2_unfreeze_late": D2_UNFREEZE_LATE,
    "padmask_inverted": PADMASK_INVERTED,
}
HEALTHY = {
    "fcn_back_to_train": fixed_twin(
        FCN_EVAL_LEFT, [("        # RETURN", "        self.model.train()  # RETURN")]
    ),
    "d2_optimizer_rebuilt": fixed_twin(
        D2_UNFREEZE_LATE,
        [("        # REBUILD", "        optimizer = build_optimizer(model, 0.02)  # REBUILD")],
    ),
    "padmask_true_on_padding": fixed_twin(
        PADMASK_INVERTED,
        [
            (
                "padding_mask = src != self.PAD_IDX  # MASK",
                "padding_mask = src == self.PAD_IDX  # MASK",
            )
        ],
    ),
}


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_validation_helper_leaves_the_model_in_eval_mode(runs):
    r = runs["fcn_eval_left"]
    assert r.rc == 0, r
    f = top3(r, "TD402")
    assert "eval mode" in f["cause"]


def test_head_unfrozen_after_the_optimizer_was_built(runs):
    r = runs["d2_unfreeze_late"]
    assert r.rc == 0, r
    f = top3(r, "TD103")
    assert "box_head" in f["title"]
    assert "never applied" in f["title"]


def test_inverted_key_padding_mask_reports_the_vanishing_gradient(runs):
    """A known partial miss (see the docstring): the symptom, with its measured cause."""
    r = runs["padmask_inverted"]
    assert r.rc == 0, r
    f = top3(r, "TD104")
    assert "tiny" in f["cause"] and "raise the learning rate" not in f["fix"]

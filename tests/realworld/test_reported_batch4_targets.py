"""Real reports of targets wired wrong (fourth batch): a causal transformer's targets not
shifted, multi-hot labels given to CrossEntropyLoss, segmentation masks resized with bilinear
interpolation. Each is written as the reporter's code (made runnable on small synthetic data)
and run unchanged under the zero-code `traindoctor run`, beside the fixed twin, which must stay
silent (no error, no warning).

- Project-MONAI/GenerativeModels#314 (https://github.com/Project-MONAI/GenerativeModels/issues/314):
  "we are training them to predict token N, given tokens 0-N inclusive"; `ce_loss(logits,
  latent)`, fixed by `ce_loss(logits[:, :, :-1], latent[:, 1:])`. A decoder-only transformer
  with a causal mask over latent tokens (2 epochs, 32 steps; with 64 steps the loss reached
  0.56 against 2.5 for the fixed twin: the model copies its input). Before (at 0614f81):
  nothing but TD502's info. After: TD520 warning, 100% of the targets equal the ids an
  nn.Embedding read at the same position (3.1% equal the next position's), through a causal
  attention; the loss measured 3.74 -> 2.84.
- wenliangdai/Modality-Transferable-MER#3 (https://github.com/wenliangdai/Modality-Transferable-MER/issues/3):
  CMU-MOSEI emotions are multi-label but the README trained them with `--loss ce`; torch since
  1.10 accepts the float multi-hot rows as "class probabilities" and raises nothing. Before:
  TD209 warning with a wrong cause (the first loss 5.3 "far above ln 6 = 1.79": "the logits are
  large at init"), while it is high because each row sums to its label count. After: TD511
  error, rows summing to up to 6 (92% of a batch's rows hold several labels), fix
  BCEWithLogitsLoss; TD209 says nothing.
- https://discuss.pytorch.org/t/segmentation-with-bilinear-or-nearest-or-cubic/34689: image and
  binary mask resized with bilinear interpolation, then `mask.long()` truncates the fractional
  edges to 0: small objects shrink (foreground 1.86% of pixels with nearest, 0.81% with
  bilinear). A known miss: the targets the loss sees are valid class ids, and nothing measured
  on the run tells a mask that lost pixels from one that has few.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, loud, reported_batch, top3

pytestmark = pytest.mark.slow


# Project-MONAI/GenerativeModels#314: the inferer returns the logits of the whole latent
# sequence and the loss compares them with that same sequence.
MONAI_UNSHIFTED = """
import torch
import torch.nn as nn

torch.manual_seed(0)
VOCAB, SEQ = 32, 16
g = torch.Generator().manual_seed(1)
trans = torch.softmax(torch.randn(VOCAB, VOCAB, generator=g) * 2.0, dim=1)


def sample_latents(n):
    seq = torch.empty(n, SEQ, dtype=torch.long)
    seq[:, 0] = torch.randint(0, VOCAB, (n,), generator=g)
    for t in range(1, SEQ):
        seq[:, t] = torch.multinomial(trans[seq[:, t - 1]], 1, generator=g).squeeze(1)
    return seq


class DecoderOnlyTransformer(nn.Module):
    def __init__(self, num_tokens, max_seq_len, dim=32, depth=2, heads=4):
        super().__init__()
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True)
        self.model = nn.TransformerEncoder(layer, depth)
        self.to_logits = nn.Linear(dim, num_tokens)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(max_seq_len))

    def forward(self, x):
        n = x.shape[1]
        h = self.token_emb(x) + self.pos_emb(torch.arange(n, device=x.device))
        h = self.model(h, mask=self.causal[:n, :n], is_causal=True)
        return self.to_logits(h)


class Inferer:
    def __call__(self, inputs, transformer_model):
        latent = inputs
        prediction = transformer_model(x=latent)
        return prediction, latent


data = sample_latents(1024)
transformer_model = DecoderOnlyTransformer(num_tokens=VOCAB, max_seq_len=SEQ)
optimizer = torch.optim.Adam(transformer_model.parameters(), lr=5e-4)
ce_loss = nn.CrossEntropyLoss()
inferer = Inferer()
for epoch in range(2):
    for i in range(0, len(data), 64):
        batch = data[i:i + 64]
        optimizer.zero_grad(set_to_none=True)
        logits, latent = inferer(batch, transformer_model)
        logits = logits.transpose(1, 2)
        loss = ce_loss(logits, latent)  # TARGET
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")
"""

# wenliangdai/Modality-Transferable-MER#3: multi-label emotions with `--loss ce`.
MOSEI_MULTILABEL_CE = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
g = torch.Generator().manual_seed(2)
N, D, E = 3000, 74, 6
X = torch.randn(N, D, generator=g)
W = torch.randn(D, E, generator=g)
Y = ((X @ W) > 1.0).float()  # multi-hot: 0 to 6 emotions per utterance


class EmotionClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, E))

    def forward(self, x):
        return self.net(x)


model = EmotionClassifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()  # LOSS
loader = DataLoader(TensorDataset(X, Y), batch_size=64, shuffle=True)
for epoch in range(4):
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        logits = model(x)
        loss = criterion(logits, y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        pred = (torch.sigmoid(model(X)) > 0.5).float()
        f1 = (2 * (pred * Y).sum() / (pred.sum() + Y.sum())).item()
    print(f"epoch {epoch} loss {loss.item():.3f} micro-F1 {f1:.3f}")
"""

# discuss.pytorch.org 34689: masks resized like the images, bilinear.
BILINEAR_MASKS = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
g = torch.Generator().manual_seed(6)
N, S, R = 256, 32, 12


def make_pair():
    img = 0.3 * torch.randn(1, S, S, generator=g)
    mask = torch.zeros(1, S, S)
    for _ in range(3):  # small objects, 2-3 pixels wide
        y, x = torch.randint(2, S - 4, (2,), generator=g).tolist()
        w = int(torch.randint(2, 4, (1,), generator=g))
        mask[:, y:y + w, x:x + w] = 1.0
        img[:, y:y + w, x:x + w] += 1.0
    return img, mask


pairs = [make_pair() for _ in range(N)]
imgs = torch.stack([p[0] for p in pairs])
masks = torch.stack([p[1] for p in pairs])
imgs = F.interpolate(imgs, size=(R, R), mode="bilinear", align_corners=False)
masks = F.interpolate(masks, size=(R, R), mode="bilinear", align_corners=False)  # RESIZE
targets = masks.squeeze(1).long()

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
    nn.Conv2d(16, 2, 1),
)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(6):
    for i in range(0, N, 16):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(imgs[i:i + 16]), targets[i:i + 16])
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f} foreground {targets.float().mean().item():.4f}")
"""


BUGGY = {
    "monai_unshifted": MONAI_UNSHIFTED,
    "mosei_multilabel_ce": MOSEI_MULTILABEL_CE,
    "bilinear_masks": BILINEAR_MASKS,
}
HEALTHY = {
    "monai_shifted": fixed_twin(
        MONAI_UNSHIFTED,
        [
            (
                "loss = ce_loss(logits, latent)  # TARGET",
                "loss = ce_loss(logits[:, :, :-1], latent[:, 1:])  # TARGET",
            )
        ],
    ),
    "mosei_bce": fixed_twin(
        MOSEI_MULTILABEL_CE,
        [
            (
                "criterion = nn.CrossEntropyLoss()  # LOSS",
                "criterion = nn.BCEWithLogitsLoss()  # LOSS",
            )
        ],
    ),
    "masks_nearest": fixed_twin(
        BILINEAR_MASKS,
        [
            (
                'masks = F.interpolate(masks, size=(R, R), mode="bilinear", align_corners=False)',
                'masks = F.interpolate(masks, size=(R, R), mode="nearest")',
            )
        ],
    ),
}


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_causal_transformer_trained_on_unshifted_targets(runs):
    r = runs["monai_unshifted"]
    assert r.rc == 0, r
    f = top3(r, "TD520")
    assert f["severity"] == "warning"
    assert "causal attention" in f["cause"] and "copy its input" in f["cause"]
    assert f["evidence"]["share_equal_to_input_ids"] == 1.0


def test_multi_hot_labels_into_cross_entropy(runs):
    r = runs["mosei_multilabel_ce"]
    assert r.rc == 0, r
    f = top3(r, "TD511")
    assert "multi-hot" in f["title"] and "BCEWithLogitsLoss" in f["fix"]
    assert "TD209" not in loud(r), r  # the high first loss is the targets', not the init's


def test_known_miss_bilinear_masks_run(runs):
    """Said nothing about: the truncated masks are valid class ids (see the docstring)."""
    r = runs["bilinear_masks"]
    assert r.rc == 0, r

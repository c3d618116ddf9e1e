"""Real reports of labels that do not belong to their inputs (third batch): X and y shuffled
independently, a Dataset that reads its labels in another order than its inputs. Each is
written as the reporter's code (made runnable on small synthetic data) and run unchanged under
the zero-code `traindoctor run`, beside the fixed twin, which must stay silent (no error, no
warning).

Measured at 8ef835d (before) and after this change (`traindoctor run`; load average 10-14 on
2 cores):
- X and y each shuffled by its own np.random.shuffle (128 steps): the loss stays 1.11 -> 1.08,
  the entropy of the labels seen being 1.09. Before: TD108 warning with the generic cause
  ("the targets may not match the inputs ..., the loss may not be the quantity the model can
  reduce, or the model is too small"). After: TD108, the cause measured: the loss stays at the
  entropy of the labels seen (predicting the class frequencies whatever the input), so the
  labels do not belong to their inputs.
- ZhengyuZhao/Targeted-Transfer#4 style, a Dataset pairing a directory listing's images with
  the csv's labels, trained by Lightning (90 steps): 1.614 -> 1.610 against an entropy of 1.608.
  Before: TD108 with the generic cause. After: TD108, the same measured cause.
Both fixed twins are silent before and after. A model large enough to memorize its shuffled
labels (many epochs over little data) makes its training loss fall: nothing measured on the
training run tells that from learning, so it is not reported (a validation loss that rises
would).
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, reported_batch, top3

pytestmark = pytest.mark.slow


# The numpy idiom "shuffle the training set" written as two np.random.shuffle calls (the
# synchronized-permutation question of every ML course; the answer: one permutation indexes
# both): each call draws its own permutation, so the labels no longer match the rows.
NUMPY_SHUFFLED_SEPARATELY = """
import numpy as np
import torch
import torch.nn as nn

np.random.seed(0)
torch.manual_seed(0)
X = np.random.randn(2000, 20).astype(np.float32)
W = np.random.randn(20, 3).astype(np.float32)
y = (X @ W).argmax(1)

np.random.shuffle(X)  # SHUFFLE
np.random.shuffle(y)
X_train, y_train = torch.from_numpy(X), torch.from_numpy(y).long()

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
batch_size = 64
for epoch in range(4):
    for i in range(0, len(X_train), batch_size):
        xb, yb = X_train[i:i + batch_size], y_train[i:i + batch_size]
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    acc = (model(X_train).argmax(1) == y_train).float().mean()
    print(f"epoch {epoch} loss {loss.item():.3f} acc {acc:.3f}")
"""

# ZhengyuZhao/Targeted-Transfer#4 ("the list of images may not match with list of labels"):
# the image ids come from a directory listing, the labels from the csv's order; a Dataset
# indexes each list with the same i, and a Lightning module trains on it.
DATASET_LABELS_OTHER_ORDER = """
import lightning.pytorch as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

torch.manual_seed(0)
g = torch.Generator().manual_seed(3)
N = 960
prototypes = torch.randn(5, 3, 8, 8, generator=g)
csv_labels = torch.randint(0, 5, (N,), generator=g)
store = {f"img_{i:04d}": prototypes[c] + 0.5 * torch.randn(3, 8, 8, generator=g)
         for i, c in enumerate(csv_labels.tolist())}
listing = sorted(store, key=lambda k: hash(k) % 9973)  # os.listdir's order


class ImageNetSubset(Dataset):
    def __init__(self):
        self.image_id_list = listing
        self.label_ori_list = csv_labels.tolist()

    def __len__(self):
        return len(self.image_id_list)

    def __getitem__(self, i):
        return store[self.image_id_list[i]], self.label_ori_list[i]  # LABEL


class SmallCNN(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


loader = DataLoader(ImageNetSubset(), batch_size=32, shuffle=True)
trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(SmallCNN(), loader)
"""


BUGGY = {
    "numpy_shuffled_separately": NUMPY_SHUFFLED_SEPARATELY,
    "dataset_labels_other_order": DATASET_LABELS_OTHER_ORDER,
}
HEALTHY = {
    "numpy_shuffled_separately_fixed": fixed_twin(
        NUMPY_SHUFFLED_SEPARATELY,
        [
            (
                "np.random.shuffle(X)  # SHUFFLE\nnp.random.shuffle(y)\n",
                "perm = np.random.permutation(len(X))  # SHUFFLE\nX, y = X[perm], y[perm]\n",
            )
        ],
    ),
    "dataset_labels_other_order_fixed": fixed_twin(
        DATASET_LABELS_OTHER_ORDER,
        [
            (
                "self.label_ori_list = csv_labels.tolist()",
                "self.label_ori_list = [csv_labels[int(k[4:])].item() for k in listing]",
            )
        ],
    ),
}


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


@pytest.mark.parametrize("name", ["numpy_shuffled_separately", "dataset_labels_other_order"])
def test_labels_apart_from_their_inputs(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    f = top3(r, "TD108")
    assert "the entropy of the labels seen" in f["cause"]
    assert "shuffled separately" in f["cause"]

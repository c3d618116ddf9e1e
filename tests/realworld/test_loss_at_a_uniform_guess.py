"""A loss that creeps down from its init onto a uniform guess (ln C) and stays there.

Reports of a classifier "stuck at 2.30" over 10 classes (discuss.pytorch.org/t/43814, "Cross
Entropy loss is not decreasing") have several causes; here the one that used to go unreported:
Adam(weight_decay=10), an L2 term that outweighs the gradient, so the weights shrink to a
fraction of their norm and every logit tends to 0. The loss falls steadily from its init
(1.69) onto ln 5 = 1.609 by less than 5%, which TD108 took for a slow fall (an LSTM at its
unigram plateau) and left silent. A loss that ends no lower than a uniform guess learned
nothing of its input: TD108 warns, with the measured shrink of the weights and the
weight_decay. The fixed twin (weight_decay=1e-4) reaches 0.3 and stays silent.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, reported_batch, top3

pytestmark = pytest.mark.slow

TABULAR = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

torch.manual_seed(0)


class Tab(Dataset):
    def __init__(self, n=2048):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 20, generator=g) * 3 + 1
        self.y = (self.x @ torch.randn(20, 5, generator=g)).argmax(1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(20, 64), nn.Linear(64, 64), nn.Linear(64, 5)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        return self.out(self.drop(F.relu(self.fc2(x))))


dl = DataLoader(Tab(), batch_size=64, shuffle=True)
model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=10.0)  # DECAY
criterion = nn.CrossEntropyLoss()
for epoch in range(6):
    total = 0.0
    for x, y in dl:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item()
    print(f"epoch {epoch} loss {total / len(dl):.4f}")
"""

BUGGY = {"weight_decay_10": TABULAR}
HEALTHY = {
    "weight_decay_fixed": fixed_twin(TABULAR, [("weight_decay=10.0", "weight_decay=1e-4")]),
}
runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_a_loss_that_ends_at_a_uniform_guess_is_td108_with_the_weights_shrink(runs):
    r = runs["weight_decay_10"]
    f = top3(r, "TD108")
    assert f["severity"] == "warning"
    assert "no lower than a uniform guess over the classes (1.609)" in f["title"]
    assert "weights shrank to" in f["cause"] and "weight_decay=10" in f["cause"]

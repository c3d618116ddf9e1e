"""Real reports of validation that runs with dropout on (second batch), written as the
reporter's code (made runnable on small synthetic data) and run unchanged under the zero-code
`traindoctor run`, beside the fixed twin, which must stay silent (no error, no warning).

- TD403 (missed before: the functional case added to TD403 for it): rixwew/pytorch-fm#21, the
  attentional factorization machine calls `F.dropout(attn_scores, p=...)` without
  `training=self.training`; F.dropout's `training` defaults to True, so `model.eval()` does not
  turn it off and every validation forward drops (validation loss 0.353 against 0.319 for the
  fixed twin, same training). Reported at the F.dropout line.
- Silent: the same with `training=self.training`, and a Tacotron 2-style prenet that writes
  `training=True` on purpose (NVIDIA/tacotron2#247: dropout kept on at inference by design).
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, line_of, loud, run_scripts

pytestmark = pytest.mark.slow


# rixwew/pytorch-fm#21: "F.dropout(attn_scores, p=0.1) should be F.dropout(attn_scores, p=0.1,
# training=self.training): model.train() uses dropout, model.eval() does not."
FUNCTIONAL_DROPOUT_IN_EVAL = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
n_fields, n_items, embed_dim = 6, 40, 16
g = torch.Generator().manual_seed(0)
x_all = torch.randint(0, n_items, (3000, n_fields), generator=g)
w_true = torch.randn(n_items, generator=g)
y_all = (w_true[x_all].sum(1) > 0).float()


class AttentionalFactorizationMachineModel(nn.Module):
    def __init__(self, field_dims, embed_dim, attn_size, dropouts):
        super().__init__()
        self.embedding = nn.Embedding(field_dims, embed_dim)
        self.linear = nn.Embedding(field_dims, 1)
        self.attention = nn.Linear(embed_dim, attn_size)
        self.projection = nn.Linear(attn_size, 1)
        self.fc = nn.Linear(embed_dim, 1)
        self.dropouts = dropouts

    def forward(self, x):
        emb = self.embedding(x)
        i, j = torch.triu_indices(n_fields, n_fields, 1)
        inner_product = emb[:, i] * emb[:, j]
        attn_scores = F.relu(self.attention(inner_product))
        attn_scores = F.softmax(self.projection(attn_scores), dim=1)
        attn_scores = F.dropout(attn_scores, p=self.dropouts[0])  # DROPOUT
        attn_output = torch.sum(attn_scores * inner_product, dim=1)
        attn_output = F.dropout(attn_output, p=self.dropouts[1])  # DROPOUT2
        return (self.linear(x).sum(1) + self.fc(attn_output)).squeeze(1)


model = AttentionalFactorizationMachineModel(n_items, embed_dim, 16, (0.2, 0.2))
criterion = nn.BCEWithLogitsLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(4):
    model.train()
    for k in range(0, 2400, 100):
        loss = criterion(model(x_all[k:k + 100]), y_all[k:k + 100])
        model.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    val_loss = 0.0
    with torch.no_grad():
        for k in range(2400, 3000, 100):
            val_loss += criterion(model(x_all[k:k + 100]), y_all[k:k + 100]).item() / 6
    print(epoch, val_loss)
"""

# Tacotron 2's prenet: F.dropout(..., training=True) on purpose, at inference too.
PRENET_ALWAYS_ON = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


class Prenet(nn.Module):
    def __init__(self, in_dim, sizes):
        super().__init__()
        in_sizes = [in_dim] + sizes[:-1]
        self.layers = nn.ModuleList([nn.Linear(i, o, bias=False) for i, o in zip(in_sizes, sizes)])

    def forward(self, x):
        for linear in self.layers:
            x = F.dropout(F.relu(linear(x)), p=0.5, training=True)  # always on, as in Tacotron 2
        return x


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.prenet = Prenet(8, [32, 32])
        self.proj = nn.Linear(32, 8)

    def forward(self, x):
        return self.proj(self.prenet(x))


x = torch.randn(600, 8)
y = torch.tanh(x @ torch.randn(8, 8))
model = Decoder()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(4):
    model.train()
    for k in range(0, 480, 40):
        loss = F.mse_loss(model(x[k:k + 40]), y[k:k + 40])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val = sum(F.mse_loss(model(x[k:k + 40]), y[k:k + 40]).item() for k in range(480, 600, 40))
"""


FIXED = fixed_twin(
    FUNCTIONAL_DROPOUT_IN_EVAL,
    [
        ("p=self.dropouts[0])", "p=self.dropouts[0], training=self.training)"),
        ("p=self.dropouts[1])", "p=self.dropouts[1], training=self.training)"),
    ],
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    scripts = {"buggy": FUNCTIONAL_DROPOUT_IN_EVAL, "fixed": FIXED, "prenet": PRENET_ALWAYS_ON}
    return run_scripts(tmp_path_factory, scripts)


def test_functional_dropout_at_its_default_runs_in_validation(runs):
    r = runs["buggy"]
    assert r.rc == 0, r
    assert loud(r)[:1] == ["TD403"], r
    f = r.finding("TD403")
    assert f["where"]["source"] == f"train.py:{line_of(r.cwd / 'train.py', '# DROPOUT')}"
    assert f["evidence"]["functional_dropout"]["default"] is True
    assert "training=self.training" in f["fix"]


@pytest.mark.parametrize("name", ["fixed", "prenet"])
def test_mode_following_and_deliberate_dropout_are_silent(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    assert loud(r) == [], r

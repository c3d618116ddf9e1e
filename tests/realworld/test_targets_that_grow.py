"""A regression loss that rises because its targets grow, not because the training diverges.

An LSTM trained by truncated backprop on one ordered series whose target is a random walk
(`signal.cumsum(0).clamp(-3, 3)`, after a reproduction of pytorch/pytorch#2198 written for
another helper): the walk starts at 0, so the first chunks' targets are small and the mean
squared error rises 2.0 -> 8.1 with them, while the loss relative to the targets' mean square
stays ~1. TD210 called that a divergence with "a learning rate too large" as its cause. The
same data under SGD at lr 2 does diverge (to 1e31), and is still an error."""

from __future__ import annotations

import pytest

from tests.cli.conftest import loud, run_scripts

WALK = """
import torch
import torch.nn as nn


class LSTMTagger(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.lstm = nn.LSTM(input_dim, hidden_dim)
        self.fc = nn.Linear(hidden_dim, output_dim)

    def init_hidden(self, batch):
        return (torch.zeros(1, batch, self.hidden_dim), torch.zeros(1, batch, self.hidden_dim))

    def forward(self, x, hidden):
        out, hidden = self.lstm(x, hidden)
        return self.fc(out), hidden


torch.manual_seed(0)
seq_len, batch, n_in = 10, 8, 4
signal = torch.randn(seq_len * 40, batch, n_in)
target = signal.cumsum(0).clamp(-3, 3)[:, :, :1]
model = LSTMTagger(n_in, 16, 1)
optimizer = OPTIMIZER
criterion = nn.MSELoss()
hidden = model.init_hidden(batch)
for i in range(0, signal.size(0), seq_len):
    x, y = signal[i:i + seq_len], target[i:i + seq_len]
    optimizer.zero_grad()
    hidden = tuple(h.detach() for h in hidden)
    output, hidden = model(x, hidden)
    loss = criterion(output, y)
    loss.backward()
    optimizer.step()
"""

SCRIPTS = {
    "adam": WALK.replace("OPTIMIZER", "torch.optim.Adam(model.parameters(), lr=1e-2)"),
    "sgd_lr_2": WALK.replace("OPTIMIZER", "torch.optim.SGD(model.parameters(), lr=2.0)"),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, SCRIPTS)


def test_a_loss_that_rose_with_its_targets_is_no_divergence(runs):
    assert loud(runs["adam"]) == []


def test_a_divergence_on_the_same_growing_targets_is_still_an_error(runs):
    found = runs["sgd_lr_2"].findings()["findings"]
    assert any(f["code"] == "TD210" and f["severity"] == "error" for f in found), found

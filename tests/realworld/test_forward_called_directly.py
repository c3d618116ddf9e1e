"""A classifier as pytorch/tutorials' char-RNN tutorial writes it: `model.forward(x)` called
directly (no forward hooks run, so the loss code's lines are never recorded) and per-example
losses summed from a Python 0 (`batch_loss = 0; batch_loss += loss`). The first add has a
None input in the graph, as a detached term's has: without the line TD302 cannot tell, so it
says info. Called as `model(x)`, the cut tracker sees the same 0 as a constant: nothing."""

from __future__ import annotations

import pytest

from tests.cli.conftest import loud, run_scripts

SUM_LOOP = """
import torch
import torch.nn as nn

torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(8, 16)
        self.h2o = nn.Linear(16, 3)

    def forward(self, x):
        _, h = self.rnn(x)
        return torch.log_softmax(self.h2o(h[0]), 1)


net = Net()
opt = torch.optim.SGD(net.parameters(), lr=0.1)
crit = nn.NLLLoss()
data = [(torch.randn(3 + i % 4, 1, 8), torch.tensor([i % 3])) for i in range(32)]
for epoch in range(6):
    for b in range(0, 32, 8):
        batch_loss = 0
        for x, y in data[b : b + 8]:
            batch_loss += crit(CALL, y)
        batch_loss.backward()
        opt.step()
        opt.zero_grad()
print("done", batch_loss.item())
"""

SCRIPTS = {
    "forward_direct": SUM_LOOP.replace("CALL", "net.forward(x)"),
    "called": SUM_LOOP.replace("CALL", "net(x)"),
    "forward_direct_detached": SUM_LOOP.replace("CALL", "net.forward(x)").replace(
        "batch_loss += crit(net.forward(x), y)",
        "batch_loss += 0.1 * net.forward(x).detach().sum() + crit(net.forward(x), y)",
    ),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_scripts(tmp_path_factory, SCRIPTS)


def test_sum_from_python_zero_through_forward_is_not_an_error(runs):
    r = runs["forward_direct"]
    assert r.rc == 0, r
    assert loud(r) == [], loud(r)


def test_sum_from_python_zero_through_call_is_silent(runs):
    r = runs["called"]
    assert r.rc == 0, r
    assert loud(r) == [] and "TD302" not in r.codes(), r


def test_unseen_add_stays_info_even_when_a_term_is_detached(runs):
    # Without the lines the walk alone cannot tell a number from a detached tensor: it says
    # so at info rather than guess.
    r = runs["forward_direct_detached"]
    assert r.rc == 0, r
    assert r.finding("TD302")["severity"] == "info", r

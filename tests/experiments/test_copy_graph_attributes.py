"""The experiments' copy of a model that keeps tensors of the graph as attributes: pytorch/
examples' actor-critic (`self.saved_actions`, a list of (log_prob, value) pairs) and an RNN
keeping `self.hidden`. `copy.deepcopy` raises on those (only graph leaves can be copied)."""

from __future__ import annotations

import torch

from traindoctor._hooks import copy_without_hooks


class Policy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 8)
        self.head = torch.nn.Linear(8, 2)
        self.saved_actions: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.hidden: torch.Tensor | None = None
        self.rewards: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        self.hidden = h
        return self.head(h)


def test_copy_detaches_graph_attributes():
    torch.manual_seed(0)
    policy = Policy()
    out = policy(torch.randn(3, 4))
    logp = out.log_softmax(-1)[:, 0]
    policy.saved_actions.append((logp, out.sum()))
    policy.rewards.append(1.0)
    twin = copy_without_hooks(policy)
    assert twin.hidden is not None and twin.hidden.grad_fn is None
    assert torch.equal(twin.hidden, policy.hidden)
    ((lp, value),) = twin.saved_actions
    assert lp.grad_fn is None and torch.equal(lp, logp)
    # The user's objects are untouched: still in the graph, and backward still works.
    assert policy.saved_actions[0][0] is logp and logp.grad_fn is not None
    assert twin.saved_actions is not policy.saved_actions and twin.rewards == [1.0]
    logp.sum().backward()
    assert policy.body.weight.grad is not None and twin.body.weight.grad is None
    # The copy trains on its own.
    twin(torch.randn(3, 4)).sum().backward()
    assert twin.body.weight.grad is not None

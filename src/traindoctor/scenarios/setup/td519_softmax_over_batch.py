"""TD519: a REINFORCE policy whose nn.Softmax(dim=0) was written for one state: acting on one
state at a time it normalizes over the actions, trained on the episode's states at once it
normalizes over the states (each column of the batch sums to 1).

`bug=True` builds it with dim=0; the healthy twin `policy_softmax_last_dim` with dim=-1."""

from functools import partial

import torch
import torch.nn as nn

from .._base import Scenario, log


def train(steps: int = 30, watch=None, bug: bool = False):
    g = torch.Generator().manual_seed(19)
    torch.manual_seed(19)
    policy = nn.Sequential(
        nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2), nn.Softmax(dim=0 if bug else -1)
    )
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    doc = watch(policy, optimizer) if watch else None
    for _ in range(steps):
        states, actions, rewards = [], [], []
        for _ in range(12):  # an episode: one state at a time
            state = torch.randn(4, generator=g)
            probs = policy(state)
            action = int(torch.multinomial(probs.detach(), 1, generator=g))
            states.append(state)
            actions.append(action)
            rewards.append(1.0 if action == int(state[0] > 0) else 0.0)
        batch = policy(torch.stack(states))  # the episode's states at once
        chosen = batch.gather(1, torch.tensor(actions).view(-1, 1)).squeeze(1)
        loss = -(torch.tensor(rewards) * torch.log(chosen)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return policy


SCENARIOS = (
    Scenario(
        name="policy_softmax_dim0",
        bug="nn.Softmax(dim=0) acting on one state, trained on a batch of states",
        train=partial(train, bug=True),
        expect=("TD519",),
        top="TD519",
        where={"module": "3"},
        twin="policy_softmax_last_dim",
        steps=30,
    ),
    Scenario(name="policy_softmax_last_dim", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train(bug=True)

"""TD106 on a second optimizer that steps every 2nd step (TD3's delayed policy update):

- `bug="actor_not_zeroed"`: the actor's `zero_grad()` is missing, so each actor step applies
  the sum of every actor gradient since the start. The critic is zeroed every step. The actor
  steps after the critic's step, on odd steps only, which the sampled steps (10, 20, ...) never
  hold: TD106 reads the actor over its own cycles (probes/cycles.py).
The healthy twin `delayed_actor` zeroes both; the actor's loss backpropagates into the critic,
whose grads the critic's own zero_grad() clears (not a carried gradient).
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log


def train(steps: int = 60, watch=None, bug: str | None = None, every: int = 2):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    actor = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 1), nn.Tanh())
    critic = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))
    q_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    pi_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    doc = watch({"actor": actor, "critic": critic}, [q_opt, pi_opt]) if watch else None
    # a fixed one-step task: the return of (state, action) is known
    w = torch.randn(4, 1, generator=g)
    for step in range(steps):
        obs = torch.randn(64, 3, generator=g)
        act = torch.rand(64, 1, generator=g) * 2 - 1
        ret = torch.cat([obs, act], 1) @ w
        q_loss = F.mse_loss(critic(torch.cat([obs, act], 1)), ret)
        q_opt.zero_grad()
        q_loss.backward()
        q_opt.step()
        log(doc, loss=q_loss)
        if step % every == 1:  # after an odd number of critic steps, as TD3 from learning_starts
            actor_loss = -critic(torch.cat([obs, actor(obs)], 1)).mean()
            if bug != "actor_not_zeroed":
                pi_opt.zero_grad()
            actor_loss.backward()
            pi_opt.step()  # BUG (actor_not_zeroed): no pi_opt.zero_grad() before it
    return actor


SCENARIOS = (
    Scenario(
        name="delayed_actor_not_zeroed",
        bug="TD3-style actor stepped every 2nd step without its zero_grad()",
        train=partial(train, bug="actor_not_zeroed"),
        expect=("TD106",),
        top="TD106",
        where={"source": "td106_delayed_actor_not_zeroed.py"},
        twin="delayed_actor",
    ),
    Scenario(name="delayed_actor", bug="", train=train),
)

if __name__ == "__main__":
    train(bug="actor_not_zeroed")

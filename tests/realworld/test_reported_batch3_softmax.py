"""Real reports of a softmax over the batch dimension (third batch): a policy whose
`nn.Softmax(dim=0)`, written for one state, normalizes over the states of a batch; a softmax
written from scratch that sums over dim 0. Each is written as the reporter's code (made
runnable without gym or datasets) and run unchanged under the zero-code `traindoctor run`,
beside the fixed twin, which must stay silent (no error, no warning).

Measured at 8ef835d (before) and after this change (`traindoctor run`; load average 10-20 on
2 cores):
- "Deep Reinforcement Learning in Action" ch. 4, REINFORCE on CartPole with
  `nn.Softmax(dim=0)` (150 episodes, one optimizer step each): the policy acts on one state
  (dim 0: the 2 actions) and is trained on the episode's states (dim 0: the states). Before:
  missed (TD502 only; TD508 judges a softmax feeding a standard loss, this loss is written by
  hand). After: TD519 warning on module `3`, with the unbatched (2,) and batched (T, 2) shapes.
- Softmax regression from scratch with the partition summed over dim 0, hand-written SGD on
  raw tensors: missed before and after. The softmax is three tensor ops (exp, sum(0), div) in
  the user's code, on raw tensors, into a hand-written loss; no module or loss call carries
  its dim, and a column-normalized (B, C) matrix is also what a healthy contrastive or
  similarity loss computes, so nothing measured tells it apart (`traindoctor check`'s TD704
  would, on a model it can replay; raw tensors updated by hand are not replayed).
Both fixed twins are silent before and after, and so is a sequence-first attention pooling
whose `nn.Softmax(dim=0)` normalizes over time for an unbatched (T, E) and a batched (T, B, E)
input.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, loud, reported_batch

pytestmark = pytest.mark.slow


# "Deep Reinforcement Learning in Action", ch. 4 (REINFORCE on CartPole), asked about as "why is
# softmax applied on axis 0 for policy gradient" (the batched predictions' columns sum to 1,
# not the rows): the policy acts on one state (dim 0 = the actions) and is trained on the
# episode's states at once (dim 0 = the states). CartPole's physics written out (no gym).
REINFORCE_SOFTMAX_DIM0 = """
import math

import numpy as np
import torch


class CartPole:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self):
        self.s = self.rng.uniform(-0.05, 0.05, 4)
        return self.s.copy()

    def step(self, action):
        x, x_dot, th, th_dot = self.s
        force = 10.0 if action == 1 else -10.0
        cos, sin = math.cos(th), math.sin(th)
        temp = (force + 0.05 * th_dot ** 2 * sin) / 1.1
        th_acc = (9.8 * sin - cos * temp) / (0.5 * (4.0 / 3.0 - 0.1 * cos ** 2 / 1.1))
        x_acc = temp - 0.05 * th_acc * cos / 1.1
        self.s = np.array([x + 0.02 * x_dot, x_dot + 0.02 * x_acc, th + 0.02 * th_dot,
                           th_dot + 0.02 * th_acc])
        done = abs(self.s[0]) > 2.4 or abs(self.s[2]) > 0.2095
        return self.s.copy(), 1.0, done


torch.manual_seed(0)
env = CartPole(0)
l1, l2, l3 = 4, 150, 2
model = torch.nn.Sequential(
    torch.nn.Linear(l1, l2),
    torch.nn.LeakyReLU(),
    torch.nn.Linear(l2, l3),
    torch.nn.Softmax(dim=0),  # DIM
)
learning_rate = 0.009
optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)


def discount_rewards(rewards, gamma=0.99):
    lenr = len(rewards)
    disc_return = torch.pow(gamma, torch.arange(lenr).float()) * rewards
    disc_return /= disc_return.max()
    return disc_return


def loss_fn(preds, r):
    return -1 * torch.sum(r * torch.log(preds))


MAX_DUR, MAX_EPISODES, gamma = 200, 150, 0.99
score = []
for episode in range(MAX_EPISODES):
    curr_state = env.reset()
    done = False
    transitions = []
    for t in range(MAX_DUR):
        act_prob = model(torch.from_numpy(curr_state).float())
        action = np.random.choice(np.array([0, 1]), p=act_prob.data.numpy() / act_prob.data.numpy().sum())
        prev_state = curr_state
        curr_state, _, done = env.step(action)
        transitions.append((prev_state, action, t + 1))
        if done:
            break
    ep_len = len(transitions)
    score.append(ep_len)
    reward_batch = torch.Tensor([r for (s, a, r) in transitions]).flip(dims=(0,))
    disc_returns = discount_rewards(reward_batch)
    state_batch = torch.Tensor(np.array([s for (s, a, r) in transitions]))
    action_batch = torch.Tensor([a for (s, a, r) in transitions])
    pred_batch = model(state_batch)
    prob_batch = pred_batch.gather(dim=1, index=action_batch.long().view(-1, 1)).squeeze()
    loss = loss_fn(prob_batch, disc_returns)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if episode % 30 == 0:
        print(episode, np.mean(score[-30:]))
"""

# Softmax regression from scratch (the d2l.ai chapter's `softmax(X)`, written with the
# partition summed over dim 0), trained by hand-written minibatch SGD on raw tensors.
SCRATCH_SOFTMAX_SUM_DIM0 = """
import torch

torch.manual_seed(0)
g = torch.Generator().manual_seed(6)
num_inputs, num_outputs = 64, 10
centers = torch.randn(num_outputs, num_inputs, generator=g)
labels_all = torch.randint(0, num_outputs, (3000,), generator=g)
features_all = centers[labels_all] + 1.5 * torch.randn(3000, num_inputs, generator=g)

W = torch.normal(0, 0.01, size=(num_inputs, num_outputs), requires_grad=True)
b = torch.zeros(num_outputs, requires_grad=True)


def softmax(X):
    X_exp = torch.exp(X)
    partition = X_exp.sum(0, keepdim=True)  # DIM
    return X_exp / partition


def net(X):
    return softmax(torch.matmul(X.reshape((-1, W.shape[0])), W) + b)


def cross_entropy(y_hat, y):
    return -torch.log(y_hat[range(len(y_hat)), y])


def sgd(params, lr, batch_size):
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


def data_iter(batch_size):
    idx = torch.randperm(len(labels_all))
    for i in range(0, len(idx), batch_size):
        j = idx[i:i + batch_size]
        yield features_all[j], labels_all[j]


lr, num_epochs, batch_size = 0.1, 3, 64
for epoch in range(num_epochs):
    for X, y in data_iter(batch_size):
        l = cross_entropy(net(X), y)
        l.sum().backward()
        sgd([W, b], lr, batch_size)
    with torch.no_grad():
        acc = (net(features_all).argmax(1) == labels_all).float().mean()
        print(f"epoch {epoch + 1}, loss {cross_entropy(net(features_all), labels_all).mean():f}, acc {acc:f}")
"""


# Healthy: attention pooling over time in a sequence-first model, nn.Softmax(dim=0) over the T
# steps of (T,) scores for one unbatched sequence (T, E) and of (T, B) scores for a batch.
SEQ_FIRST_ATTENTION_POOL = """
import torch
import torch.nn as nn

torch.manual_seed(0)
g = torch.Generator().manual_seed(7)
T, B, E = 12, 16, 8
proto = torch.randn(3, E, generator=g)


class AttnPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.score = nn.Linear(E, 1)
        self.softmax = nn.Softmax(dim=0)
        self.head = nn.Linear(E, 3)

    def forward(self, x):  # (T, E) or (T, B, E)
        w = self.softmax(self.score(x).squeeze(-1))
        return self.head((w.unsqueeze(-1) * x).sum(0))


model = AttnPool()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(60):
    y = torch.randint(0, 3, (B,), generator=g)
    x = proto[y].unsqueeze(0) + torch.randn(T, B, E, generator=g)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        one = model(x[:, 0])  # one unbatched sequence
"""


BUGGY = {
    "reinforce_softmax_dim0": REINFORCE_SOFTMAX_DIM0,
    "scratch_softmax_sum_dim0": SCRATCH_SOFTMAX_SUM_DIM0,
}
HEALTHY = {
    "reinforce_softmax_dim0_fixed": fixed_twin(
        REINFORCE_SOFTMAX_DIM0,
        [("torch.nn.Softmax(dim=0),  # DIM", "torch.nn.Softmax(dim=-1),  # DIM")],
    ),
    "seq_first_attention_pool": SEQ_FIRST_ATTENTION_POOL,
    "scratch_softmax_sum_dim0_fixed": fixed_twin(
        SCRATCH_SOFTMAX_SUM_DIM0,
        [("X_exp.sum(0, keepdim=True)  # DIM", "X_exp.sum(1, keepdim=True)  # DIM")],
    ),
}


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_policy_softmax_written_for_one_state_trained_on_a_batch(runs):
    r = runs["reinforce_softmax_dim0"]
    assert r.rc == 0, r
    top = loud(r)[:3]
    assert "TD519" in top, f"TD519 not in the top 3 {top}\n{r}"
    f = r.finding("TD519")
    assert f["where"]["module"] == "3"
    assert f["evidence"]["unbatched_shape"] == [2]
    assert "dim=-1" in f["fix"]


@pytest.mark.parametrize("name", ["scratch_softmax_sum_dim0"])
def test_known_misses_run(runs, name):
    # Documented in the module docstring; assert the finding here once it is caught.
    assert runs[name].rc == 0, runs[name]

# TD3 (Fujimoto et al. 2018): twin critics (the min of two target Qs), target policy smoothing
# (clipped noise on the target action), delayed actor and target updates (every 2nd critic step),
# Polyak-averaged targets. Environment: a point on a line pushed by the action toward 0.
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


def env(s, a):
    s2 = (s + 0.2 * a).clamp(-2, 2)
    return s2, -(s2**2).sum(-1)


def mlp(i, o, out=None):
    layers = [nn.Linear(i, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, o)]
    return nn.Sequential(*layers, *([out] if out else []))


actor = mlp(1, 1, nn.Tanh())
q1, q2 = mlp(2, 1), mlp(2, 1)
actor_t, q1_t, q2_t = (copy.deepcopy(m) for m in (actor, q1, q2))
a_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
c_opt = torch.optim.Adam(list(q1.parameters()) + list(q2.parameters()), lr=1e-3)
S, A, R, S2 = [], [], [], []
s = torch.rand(1) * 4 - 2
gamma, tau = 0.9, 0.01
for t in range(1200):
    with torch.no_grad():
        a = (actor(s) + 0.2 * torch.randn(1)).clamp(-1, 1) if t > 200 else torch.rand(1) * 2 - 1
    s2, r = env(s, a)
    S.append(s), A.append(a), R.append(r), S2.append(s2)
    s = torch.rand(1) * 4 - 2 if t % 25 == 24 else s2
    if t < 200:
        continue
    idx = torch.randint(0, len(S), (128,))
    bs, ba, br, bs2 = (torch.stack([X[i] for i in idx.tolist()]) for X in (S, A, R, S2))
    with torch.no_grad():
        noise = (0.2 * torch.randn_like(ba)).clamp(-0.5, 0.5)
        a2 = (actor_t(bs2) + noise).clamp(-1, 1)
        y = br[:, None] + gamma * torch.min(
            q1_t(torch.cat([bs2, a2], 1)), q2_t(torch.cat([bs2, a2], 1))
        )
    sa = torch.cat([bs, ba], 1)
    c_loss = F.mse_loss(q1(sa), y) + F.mse_loss(q2(sa), y)
    c_opt.zero_grad()
    c_loss.backward()
    c_opt.step()
    if t % 2 == 0:
        a_loss = -q1(torch.cat([bs, actor(bs)], 1)).mean()
        a_opt.zero_grad()
        a_loss.backward()
        a_opt.step()
        with torch.no_grad():
            for net, tgt in ((actor, actor_t), (q1, q1_t), (q2, q2_t)):
                for p, pt in zip(net.parameters(), tgt.parameters()):
                    pt.mul_(1 - tau).add_(p, alpha=tau)
with torch.no_grad():
    probe = torch.tensor([[-1.5], [-0.5], [0.5], [1.5]])
    print("actions at s=-1.5,-0.5,0.5,1.5 (should push toward 0):", actor(probe)[:, 0].tolist())

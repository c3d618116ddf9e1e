# PPO with clipped objective, GAE, value loss, entropy bonus on a hand-written 1-D reach env.
import torch
import torch.nn as nn
from torch.distributions import Categorical

torch.manual_seed(0)


class Reach:
    """Agent on a line [-5, 5]; goal at +4; actions left/stay/right; reward -|x-goal|/5."""

    def __init__(self, n):
        self.n = n

    def reset(self):
        self.x = torch.zeros(self.n)
        self.t = 0
        return self.obs()

    def obs(self):
        return torch.stack([self.x / 5, (4 - self.x) / 5], 1)

    def step(self, a):
        self.x = (self.x + (a.float() - 1)).clamp(-5, 5)
        self.t += 1
        r = -(self.x - 4).abs() / 5
        done = self.t >= 16
        return self.obs(), r, done


class AC(nn.Module):
    def __init__(self):
        super().__init__()
        self.pi = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 3))
        self.v = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, o):
        return Categorical(logits=self.pi(o)), self.v(o).squeeze(-1)


env, net = Reach(8), AC()
opt = torch.optim.Adam(net.parameters(), lr=3e-3, eps=1e-5)
returns = []
for it in range(30):
    obs, buf = env.reset(), []
    with torch.no_grad():
        done = False
        while not done:
            dist, v = net(obs)
            a = dist.sample()
            nobs, r, done = env.step(a)
            buf.append((obs, a, dist.log_prob(a), v, r))
            obs = nobs
        _, last_v = net(obs)
    O = torch.stack([b[0] for b in buf])
    A = torch.stack([b[1] for b in buf])
    LP = torch.stack([b[2] for b in buf])
    V = torch.stack([b[3] for b in buf])
    R = torch.stack([b[4] for b in buf])
    adv = torch.zeros_like(R)
    gae = torch.zeros(env.n)
    for t in reversed(range(len(buf))):
        nv = last_v * 0 if t == len(buf) - 1 else V[t + 1]
        delta = R[t] + 0.99 * nv - V[t]
        gae = delta + 0.99 * 0.95 * gae
        adv[t] = gae
    ret = adv + V
    returns.append(R.sum(0).mean().item())
    O, A, LP, adv, ret = (x.reshape(-1, *x.shape[2:]) for x in (O, A, LP, adv, ret))
    for epoch in range(4):
        perm = torch.randperm(len(O))
        for mb in perm.split(32):
            dist, v = net(O[mb])
            ratio = (dist.log_prob(A[mb]) - LP[mb]).exp()
            a_mb = (adv[mb] - adv[mb].mean()) / (adv[mb].std() + 1e-8)
            pg = -torch.min(ratio * a_mb, ratio.clamp(0.8, 1.2) * a_mb).mean()
            vloss = 0.5 * (v - ret[mb]).pow(2).mean()
            ent = dist.entropy().mean()
            loss = pg + 0.5 * vloss - 0.01 * ent
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            opt.step()
print("return first/last", sum(returns[:5]) / 5, sum(returns[-5:]) / 5)

# A world model in the style of PlaNet/Dreamer (Hafner et al. 2019): a recurrent state-space
# model with a deterministic GRU state and a stochastic Gaussian latent, a prior p(z_t|h_t) and a
# posterior q(z_t|h_t, o_t), reparameterised samples, an observation decoder and a reward head;
# loss = reconstruction + reward MSE + KL(post || prior) with free nats (KL clamped below at 1)
# and KL balancing (0.8 toward the prior through detach). Data: a noisy 2-D pendulum-like system.
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

torch.manual_seed(0)
T, OBS, ACT, H, Z = 20, 6, 1, 32, 8
M = torch.randn(2, OBS)


def rollout(n):
    th, om = torch.rand(n) * 6 - 3, torch.zeros(n)
    obs, act, rew = [], [], []
    for _ in range(T):
        a = torch.rand(n) * 2 - 1
        om = 0.95 * om - 0.3 * torch.sin(th) + 0.2 * a
        th = th + 0.2 * om
        x = torch.stack([torch.sin(th), torch.cos(th)], 1)
        obs.append(x @ M + 0.05 * torch.randn(n, OBS))
        act.append(a[:, None])
        rew.append(torch.cos(th))
    return torch.stack(obs, 1), torch.stack(act, 1), torch.stack(rew, 1)


class RSSM(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(OBS, 64), nn.ELU(), nn.Linear(64, 32))
        self.inp = nn.Linear(Z + ACT, H)
        self.cell = nn.GRUCell(H, H)
        self.prior = nn.Sequential(nn.Linear(H, 64), nn.ELU(), nn.Linear(64, 2 * Z))
        self.post = nn.Sequential(nn.Linear(H + 32, 64), nn.ELU(), nn.Linear(64, 2 * Z))
        self.dec = nn.Sequential(nn.Linear(H + Z, 64), nn.ELU(), nn.Linear(64, OBS))
        self.rew = nn.Sequential(nn.Linear(H + Z, 64), nn.ELU(), nn.Linear(64, 1))

    @staticmethod
    def dist(x):
        m, s = x.chunk(2, -1)
        return Normal(m, F.softplus(s) + 0.1)

    def forward(self, obs, act):
        n = obs.shape[0]
        h, z = obs.new_zeros(n, H), obs.new_zeros(n, Z)
        e = self.enc(obs)
        priors, posts, feats = [], [], []
        for t in range(T):
            h = self.cell(F.elu(self.inp(torch.cat([z, act[:, t]], -1))), h)
            pr = self.prior(h)
            po = self.post(torch.cat([h, e[:, t]], -1))
            z = self.dist(po).rsample()
            priors.append(pr), posts.append(po), feats.append(torch.cat([h, z], -1))
        return torch.stack(priors, 1), torch.stack(posts, 1), torch.stack(feats, 1)


model = RSSM()
opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-5)
for step in range(150):
    obs, act, rew = rollout(32)
    pr, po, feat = model(obs, act)
    rec = F.mse_loss(model.dec(feat), obs)
    r_loss = F.mse_loss(model.rew(feat)[..., 0], rew)
    D = model.dist
    kl_lhs = kl_divergence(D(po.detach()), D(pr)).sum(-1).mean()
    kl_rhs = kl_divergence(D(po), D(pr.detach())).sum(-1).mean()
    kl = 0.8 * kl_lhs.clamp(min=1.0) + 0.2 * kl_rhs.clamp(min=1.0)
    loss = rec + r_loss + 0.1 * kl
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
    opt.step()
    if step == 0:
        first = (rec.item(), r_loss.item())
print("recon, reward first", first, "last", (rec.item(), r_loss.item()), "kl", kl_lhs.item())

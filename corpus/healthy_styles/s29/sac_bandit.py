# SAC-style continuous policy on a 1-D bandit: tanh-squashed Gaussian with the log-det-Jacobian
# correction, a Q network, and automatic entropy tuning (log_alpha with its own optimizer; its
# loss is negative by design).
import torch
import torch.nn as nn

torch.manual_seed(0)


def reward(s, a):
    return -((a - torch.tanh(2 * s)) ** 2)


class Pi(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, s):
        mu, log_std = self.body(s).chunk(2, -1)
        std = log_std.clamp(-5, 2).exp()
        u = mu + std * torch.randn_like(mu)
        a = torch.tanh(u)
        logp = (-0.5 * ((u - mu) / std) ** 2 - std.log() - 0.9189385).sum(-1) - torch.log(1 - a.pow(2) + 1e-6).sum(-1)
        return a, logp


pi = Pi()
q = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 1))
log_alpha = torch.zeros(1, requires_grad=True)
pi_opt = torch.optim.Adam(pi.parameters(), lr=1e-3)
q_opt = torch.optim.Adam(q.parameters(), lr=1e-3)
a_opt = torch.optim.Adam([log_alpha], lr=1e-3)
target_entropy = -1.0
rs = []
for step in range(400):
    s = torch.rand(128, 1) * 2 - 1
    with torch.no_grad():
        a, _ = pi(s)
        r = reward(s, a)
    q_loss = (q(torch.cat([s, a], 1)) - r).pow(2).mean()
    q_opt.zero_grad()
    q_loss.backward()
    q_opt.step()
    a_new, logp = pi(s)
    alpha = log_alpha.exp().detach()
    pi_loss = (alpha * logp - q(torch.cat([s, a_new], 1)).squeeze(-1)).mean()
    pi_opt.zero_grad()
    pi_loss.backward()
    pi_opt.step()
    alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
    a_opt.zero_grad()
    alpha_loss.backward()
    a_opt.step()
    rs.append(r.mean().item())
print("reward first/last", sum(rs[:20]) / 20, sum(rs[-20:]) / 20, "alpha", log_alpha.exp().item())

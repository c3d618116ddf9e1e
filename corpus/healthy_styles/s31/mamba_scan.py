# A Mamba-like selective state-space block (Gu & Dao 2023) written by hand: in_proj to two
# branches, a causal depthwise conv1d, input-dependent delta (softplus), B and C, A = -exp(A_log),
# a sequential scan over time (zero-order-hold discretization), a SiLU gate, out_proj, residual
# RMS-normed blocks. Task: selective copying (recall the tokens that follow a marker).
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
V, L, MARK = 10, 16, 9


def batch(n):
    x = torch.randint(0, 8, (n, L))
    pos = torch.randint(0, L - 2, (n,))
    x[torch.arange(n), pos] = MARK
    y = x[torch.arange(n), pos + 1]
    return x, y


class SelectiveSSM(nn.Module):
    def __init__(self, d, n=8, k=4):
        super().__init__()
        e = 2 * d
        self.in_proj = nn.Linear(d, 2 * e)
        self.conv = nn.Conv1d(e, e, k, groups=e, padding=k - 1)
        self.x_proj = nn.Linear(e, 1 + 2 * n)
        self.dt_proj = nn.Linear(1, e)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1).float()).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d)
        self.n = n

    def forward(self, x):  # (B, L, d)
        Lx = x.shape[1]
        u, z = self.in_proj(x).chunk(2, -1)
        u = F.silu(self.conv(u.transpose(1, 2))[..., :Lx].transpose(1, 2))
        dt, Bm, Cm = self.x_proj(u).split([1, self.n, self.n], -1)
        delta = F.softplus(self.dt_proj(dt))  # (B, L, e)
        A = -torch.exp(self.A_log)  # (e, n)
        h = x.new_zeros(x.shape[0], u.shape[-1], self.n)
        ys = []
        for t in range(Lx):
            dA = torch.exp(delta[:, t, :, None] * A)
            h = dA * h + delta[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
            ys.append((h * Cm[:, t, None, :]).sum(-1))
        y = torch.stack(ys, 1) + u * self.D
        return self.out_proj(y * F.silu(z))


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w


class Mamba(nn.Module):
    def __init__(self, d=24, layers=2):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.norms = nn.ModuleList([RMSNorm(d) for _ in range(layers)])
        self.blocks = nn.ModuleList([SelectiveSSM(d) for _ in range(layers)])
        self.head = nn.Linear(d, V)

    def forward(self, x):
        h = self.emb(x)
        for n, b in zip(self.norms, self.blocks):
            h = h + b(n(h))
        return self.head(h[:, -1])


model = Mamba()
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
losses = []
for step in range(200):
    x, y = batch(64)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
with torch.no_grad():
    x, y = batch(512)
    acc = (model(x).argmax(1) == y).float().mean().item()
print(
    "loss first10/last10", sum(losses[:10]) / 10, sum(losses[-10:]) / 10, "acc", acc, "chance 0.125"
)

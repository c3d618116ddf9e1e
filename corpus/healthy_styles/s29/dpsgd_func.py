# DP-SGD written with torch.func: per-sample gradients (vmap(grad(functional_call))), each
# clipped to norm 1, summed, Gaussian noise added, assigned to p.grad, then SGD.step().
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

torch.manual_seed(0)
X = torch.randn(3000, 8)
y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.5)
params = dict(model.named_parameters())


def loss_one(p, x, t):
    out = functional_call(model, p, (x[None],))
    return F.cross_entropy(out, t[None])


per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
losses = []
for step in range(200):
    i = torch.randint(0, 3000, (64,))
    g = per_sample({k: v.detach() for k, v in params.items()}, X[i], y[i])
    norms = torch.stack([v.flatten(1).norm(dim=1) for v in g.values()]).norm(dim=0)
    scale = (1.0 / (norms + 1e-6)).clamp(max=1.0)
    for name, p in model.named_parameters():
        clipped = (g[name] * scale.view(-1, *[1] * (g[name].dim() - 1))).sum(0)
        p.grad = (clipped + 0.5 * torch.randn_like(clipped)) / 64
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        losses.append(F.cross_entropy(model(X[i]), y[i]).item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

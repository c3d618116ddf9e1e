# BYOL: an online network with a predictor, a target network updated as an EMA of the online one
# (no gradient), symmetric normalized-MSE between views; stop-gradient on the target.
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N = 3000
protos = torch.randn(10, 32)
lab = torch.randint(0, 10, (N,))
X = protos[lab] + 0.5 * torch.randn(N, 32)


def view(x):
    return x * (torch.rand_like(x) > 0.2) + 0.3 * torch.randn_like(x)


def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, o))


online = nn.Sequential(mlp(32, 128, 64), mlp(64, 128, 32))  # encoder + projector
predictor = mlp(32, 128, 32)
target = copy.deepcopy(online)
for p in target.parameters():
    p.requires_grad_(False)
opt = torch.optim.Adam(list(online.parameters()) + list(predictor.parameters()), lr=1e-3)


def reg(p, z):
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


losses = []
for step in range(300):
    x = X[torch.randint(0, N, (128,))]
    v1, v2 = view(x), view(x)
    p1, p2 = predictor(online(v1)), predictor(online(v2))
    with torch.no_grad():
        z1, z2 = target(v1), target(v2)
    loss = reg(p1, z2) + reg(p2, z1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for po, pt in zip(online.parameters(), target.parameters()):
            pt.mul_(0.99).add_(po, alpha=0.01)
    losses.append(loss.item())
online.eval()
with torch.no_grad():
    e = F.normalize(online[0](X), dim=1)
    nn_idx = (e @ e.T).fill_diagonal_(-9).argmax(1)
    acc = (lab[nn_idx] == lab).float().mean().item()
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "1-NN acc", acc)

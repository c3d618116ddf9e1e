# Barlow Twins (Zbontar et al. 2021): two augmented views through one encoder + projector, the
# embeddings standardised by a BatchNorm1d without affine parameters, the cross-correlation matrix
# pushed to the identity (on-diagonal (1 - c_ii)^2 + lambda * off-diagonal c_ij^2). Learns:
# a linear probe on the frozen features beats one on the raw inputs.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N, K = 2000, 10
protos = torch.randn(K, 8) @ torch.randn(8, 32)
lab = torch.randint(0, K, (N,))
X = protos[lab] / 3 + torch.randn(N, 32)


def view(x):
    return x * (torch.rand_like(x) > 0.3) + 0.5 * torch.randn_like(x)


enc = nn.Sequential(nn.Linear(32, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 64))
proj = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 128))
bn = nn.BatchNorm1d(128, affine=False)
opt = torch.optim.Adam(list(enc.parameters()) + list(proj.parameters()), lr=1e-3, weight_decay=1e-6)
lam = 5e-3
for epoch in range(8):
    perm = torch.randperm(N)
    for i in range(0, N, 200):
        x = X[perm[i : i + 200]]
        z1, z2 = proj(enc(view(x))), proj(enc(view(x)))
        c = bn(z1).t() @ bn(z2) / len(x)
        on = (torch.diagonal(c) - 1).pow(2).sum()
        off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
        loss = on + lam * off
        opt.zero_grad()
        loss.backward()
        opt.step()
    if epoch == 0:
        first = loss.item()


def probe(F_tr, F_te, y_tr, y_te):
    w = nn.Linear(F_tr.shape[1], K)
    o = torch.optim.Adam(w.parameters(), lr=1e-2)
    for _ in range(200):
        o.zero_grad()
        F.cross_entropy(w(F_tr), y_tr).backward()
        o.step()
    return (w(F_te).argmax(1) == y_te).float().mean().item()


enc.eval()
with torch.no_grad():
    feats = enc(X)
print(
    "loss first/last",
    first,
    loss.item(),
    "probe acc features",
    probe(feats[:1500], feats[1500:], lab[:1500], lab[1500:]),
    "raw",
    probe(X[:1500], X[1500:], lab[:1500], lab[1500:]),
)

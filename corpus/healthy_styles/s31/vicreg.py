# VICReg (Bardes et al. 2022): invariance (MSE between the two views' embeddings) + variance
# (a hinge keeping each dimension's std above 1) + covariance (off-diagonal covariance squared),
# weights 25/25/1, no negatives, no momentum encoder. Learns: k-NN accuracy of the features.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N, K = 2000, 8
protos = torch.randn(K, 32)
lab = torch.randint(0, K, (N,))
X = protos[lab] * 0.7 + torch.randn(N, 32)


def view(x):
    return x * (torch.rand_like(x) > 0.25) + 0.4 * torch.randn_like(x)


enc = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 64))
exp = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 128))
params = list(enc.parameters()) + list(exp.parameters())
opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-5)


def off_diagonal(m):
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg(a, b):
    inv = F.mse_loss(a, b)
    a, b = a - a.mean(0), b - b.mean(0)
    std_a, std_b = torch.sqrt(a.var(0) + 1e-4), torch.sqrt(b.var(0) + 1e-4)
    var = F.relu(1 - std_a).mean() / 2 + F.relu(1 - std_b).mean() / 2
    ca, cb = a.t() @ a / (len(a) - 1), b.t() @ b / (len(b) - 1)
    cov = off_diagonal(ca).pow(2).sum() / a.shape[1] + off_diagonal(cb).pow(2).sum() / b.shape[1]
    return 25 * inv + 25 * var + cov


def knn_acc():
    with torch.no_grad():
        f = F.normalize(enc(X), dim=-1)
        s = f @ f.t()
        s.fill_diagonal_(-2)
        return (lab[s.topk(5, 1).indices].mode(1).values == lab).float().mean().item()


before = knn_acc()
for epoch in range(8):
    perm = torch.randperm(N)
    for i in range(0, N, 128):
        x = X[perm[i : i + 128]]
        loss = vicreg(exp(enc(view(x))), exp(enc(view(x))))
        opt.zero_grad()
        loss.backward()
        opt.step()
print("last loss", loss.item(), "5-NN acc before", before, "after", knn_acc())

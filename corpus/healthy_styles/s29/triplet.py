# Triplet network with batch-hard mining (Hermans et al.) on clustered 20-D data.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
K, D = 10, 20
protos = torch.randn(K, D) * 2
labels = torch.randint(0, K, (2000,))
X = protos[labels] + torch.randn(2000, D) * 1.5

net = nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 16))
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
losses = []
for step in range(300):
    idx = torch.randint(0, 2000, (96,))
    x, y = X[idx], labels[idx]
    e = F.normalize(net(x), dim=1)
    d = torch.cdist(e, e)
    same = y[:, None] == y[None]
    hardest_pos = (d * same.float()).max(1).values
    hardest_neg = (d + same.float() * 10).min(1).values
    loss = F.relu(hardest_pos - hardest_neg + 0.3).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
with torch.no_grad():
    e = F.normalize(net(X), dim=1)
    nn_idx = torch.cdist(e, e).fill_diagonal_(9).argmin(1)
    acc = (labels[nn_idx] == labels).float().mean().item()
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "1-NN acc", acc)

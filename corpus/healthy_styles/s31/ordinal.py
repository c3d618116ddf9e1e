# Ordinal regression with a cumulative link model (McCullagh 1980; CORAL-like): one score per
# sample, K-1 ordered thresholds kept ordered by a cumulative sum of softplus increments,
# P(y > k) = sigmoid(score - theta_k), binary cross-entropy on the K-1 cumulative targets.
# Learns: mean absolute error in ranks against the majority-class baseline.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
K, D = 5, 12
w_true = torch.randn(D)


def data(n):
    x = torch.randn(n, D)
    latent = x @ w_true / D**0.5 * 2 + 0.3 * torch.randn(n)
    y = torch.bucketize(latent, torch.tensor([-1.2, -0.4, 0.4, 1.2]))
    return x, y


class CumulativeLink(nn.Module):
    def __init__(self):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 1))
        self.first = nn.Parameter(torch.tensor(-1.0))
        self.gaps = nn.Parameter(torch.zeros(K - 2))

    def thresholds(self):
        return torch.cat(
            [self.first[None], self.first + torch.cumsum(F.softplus(self.gaps) + 1e-3, 0)]
        )

    def forward(self, x):
        return self.score(x) - self.thresholds()[None, :]  # logits of P(y > k)


model = CumulativeLink()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for step in range(300):
    x, y = data(128)
    targets = (y[:, None] > torch.arange(K - 1)[None, :]).float()
    loss = F.binary_cross_entropy_with_logits(model(x), targets)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 0:
        first = loss.item()
with torch.no_grad():
    x, y = data(2000)
    pred = (model(x) > 0).sum(1)
    mae = (pred - y).abs().float().mean().item()
    base = (y - y.mode().values).abs().float().mean().item()
print(
    "loss first/last",
    first,
    loss.item(),
    "rank MAE",
    mae,
    "majority baseline",
    base,
    "thresholds",
    model.thresholds().tolist(),
)

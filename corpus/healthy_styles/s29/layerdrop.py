# LayerDrop (Fan et al. 2019): each residual block of a deep MLP is skipped for the whole batch
# with probability 0.3 during training (skipped blocks get no gradient that step).
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
X = torch.randn(3000, 20)
y = (X[:, :10].sum(1) > 0).long() * 2 + (X[:, 10:].pow(2).sum(1) > 10).long()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(64)
        self.ff = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))

    def forward(self, x):
        return x + self.ff(self.ln(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(20, 64)
        self.blocks = nn.ModuleList([Block() for _ in range(6)])
        self.out = nn.Linear(64, 4)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            if self.training and torch.rand(()) < 0.3:
                continue
            h = b(h)
        return self.out(h)


net = Net()
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
losses = []
for step in range(300):
    i = torch.randint(0, 3000, (64,))
    loss = F.cross_entropy(net(X[i]), y[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
net.eval()
with torch.no_grad():
    acc = (net(X).argmax(1) == y).float().mean().item()
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "acc", acc)

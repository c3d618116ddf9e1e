# Multi-task learning with homoscedastic uncertainty weighting (Kendall et al. 2018): learnable
# log-variances per task; the total loss goes negative as the tasks fit.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
X = torch.randn(3000, 16)
y_reg = X[:, :4].sum(1, keepdim=True) * 0.5 + 0.05 * torch.randn(3000, 1)
y_cls = (X[:, 4] - X[:, 5] > 0).long()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.reg = nn.Linear(64, 1)
        self.cls = nn.Linear(64, 2)
        self.log_vars = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        h = self.trunk(x)
        return self.reg(h), self.cls(h)


net = Net()
opt = torch.optim.Adam(net.parameters(), lr=2e-3)
losses = []
for step in range(400):
    i = torch.randint(0, 3000, (128,))
    r, c = net(X[i])
    l_reg = F.mse_loss(r, y_reg[i])
    l_cls = F.cross_entropy(c, y_cls[i])
    s = net.log_vars
    loss = 0.5 * torch.exp(-s[0]) * l_reg + 0.5 * s[0] + torch.exp(-s[1]) * l_cls + 0.5 * s[1]
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "log_vars", net.log_vars.tolist())

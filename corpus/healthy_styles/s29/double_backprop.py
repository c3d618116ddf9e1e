# Input-gradient regularization (Drucker & LeCun "double backpropagation"): the loss adds the
# squared norm of dLoss/dInput, computed with autograd.grad(create_graph=True).
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
X = torch.randn(2000, 10)
y = (X[:, 0] - X[:, 1] + 0.5 * X[:, 2] ** 2 > 0.5).long()
net = nn.Sequential(nn.Linear(10, 64), nn.Softplus(), nn.Linear(64, 64), nn.Softplus(), nn.Linear(64, 2))
opt = torch.optim.Adam(net.parameters(), lr=2e-3)
losses = []
for step in range(300):
    i = torch.randint(0, 2000, (64,))
    x = X[i].clone().requires_grad_(True)
    ce = F.cross_entropy(net(x), y[i])
    (gx,) = torch.autograd.grad(ce, x, create_graph=True)
    loss = ce + 0.1 * gx.pow(2).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(ce.item())
print("ce first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

# Quantile regression (pinball loss) for the 10/50/90% quantiles of heteroscedastic data.
import torch
import torch.nn as nn

torch.manual_seed(0)
x = torch.rand(2000, 1) * 6 - 3
y = torch.sin(x) + (0.1 + 0.3 * x.abs()) * torch.randn_like(x)
qs = torch.tensor([0.1, 0.5, 0.9])
net = nn.Sequential(nn.Linear(1, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 3))
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=150, gamma=0.3)
losses = []
for step in range(400):
    i = torch.randint(0, 2000, (128,))
    pred = net(x[i])
    err = y[i] - pred
    loss = torch.max(qs * err, (qs - 1) * err).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
with torch.no_grad():
    cover = (y < net(x)).float().mean(0)
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "coverage", cover.tolist())

# SGD with warm restarts (CosineAnnealingWarmRestarts, T_0=50, T_mult=2): the lr jumps back up at
# each restart and the loss bumps, by design; CIFAR-like small CNN on synthetic images.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N = 2000
proto = torch.randn(4, 3, 12, 12)
y = torch.randint(0, 4, (N,))
X = proto[y] + 1.5 * torch.randn(N, 3, 12, 12)
net = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    nn.Flatten(), nn.Linear(32, 4),
)
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=50, T_mult=2)
losses = []
for step in range(350):
    i = torch.randint(0, N, (64,))
    loss = F.cross_entropy(net(X[i]), y[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

# CutMix (Yun et al. 2019) with soft targets: a box of one image pasted into another, the label a
# mix of both one-hots weighted by the pasted area, the loss a soft-target cross-entropy
# (-(t * log_softmax).sum), applied with probability 0.5; a small ResNet-like CNN, SGD+Nesterov,
# a step LR schedule. Learns: clean test accuracy.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
K, S = 5, 16
templates = (torch.rand(K, 3, S, S) > 0.5).float()


def data(n):
    y = torch.randint(0, K, (n,))
    return templates[y] + 0.8 * torch.randn(n, 3, S, S), y


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1, bias=False),
    nn.BatchNorm2d(16),
    nn.ReLU(),
    Block(16),
    nn.MaxPool2d(2),
    Block(16),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(16, K),
)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
sched = torch.optim.lr_scheduler.StepLR(opt, 100, 0.2)
Xte, yte = data(500)
for step in range(200):
    x, y = data(64)
    t = F.one_hot(y, K).float()
    if torch.rand(()) < 0.5:
        lam = torch.distributions.Beta(1.0, 1.0).sample().item()
        perm = torch.randperm(len(x))
        cut = int(S * (1 - lam) ** 0.5)
        cx, cy = torch.randint(0, S, (2,)).tolist()
        x0, x1, y0, y1 = (
            max(cx - cut // 2, 0),
            min(cx + cut // 2, S),
            max(cy - cut // 2, 0),
            min(cy + cut // 2, S),
        )
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (x1 - x0) * (y1 - y0) / (S * S)
        t = lam * t + (1 - lam) * t[perm]
    loss = -(t * F.log_softmax(model(x), 1)).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    if step == 0:
        first = loss.item()
model.eval()
with torch.no_grad():
    acc = (model(Xte).argmax(1) == yte).float().mean().item()
print("loss first/last", first, loss.item(), "test acc", acc)

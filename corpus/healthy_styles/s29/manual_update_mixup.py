# A hand-written loop with no torch optimizer: mixup with soft targets (cross_entropy on class
# probabilities), updates by hand `p.data -= lr * p.grad`, grads zeroed with p.grad.zero_(),
# a step decay of the learning rate written inline.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
X = torch.randn(2000, 12)
y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).long() + (X[:, 3] > 1).long()
model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 3))
lr = 0.2
losses = []
beta = torch.distributions.Beta(0.4, 0.4)
for step in range(400):
    i = torch.randint(0, 2000, (64,))
    lam = beta.sample()
    perm = torch.randperm(64)
    x = lam * X[i] + (1 - lam) * X[i][perm]
    soft = lam * F.one_hot(y[i], 3).float() + (1 - lam) * F.one_hot(y[i][perm], 3).float()
    loss = F.cross_entropy(model(x), soft)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.data -= lr * p.grad
            p.grad.zero_()
    if step == 250:
        lr *= 0.1
    losses.append(loss.item())
with torch.no_grad():
    acc = (model(X).argmax(1) == y).float().mean().item()
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "acc", acc)

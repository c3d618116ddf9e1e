# Adversarial training (Madry et al.): each batch, a 3-step PGD attack on the inputs
# (torch.autograd.grad with respect to the input, the model in eval), then a training step on the
# adversarial examples.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N = 2000
X = torch.randn(N, 2) * 1.2
y = ((X**2).sum(1) < 1.5).long()
model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
eps, alpha = 0.1, 0.04
losses = []
for step in range(300):
    i = torch.randint(0, N, (128,))
    x, t = X[i], y[i]
    model.eval()
    delta = torch.empty_like(x).uniform_(-eps, eps).requires_grad_(True)
    for _ in range(3):
        adv_loss = F.cross_entropy(model(x + delta), t)
        (g,) = torch.autograd.grad(adv_loss, delta)
        delta = (delta + alpha * g.sign()).clamp(-eps, eps).detach().requires_grad_(True)
    model.train()
    loss = F.cross_entropy(model(x + delta.detach()), t)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
with torch.no_grad():
    acc = (model(X).argmax(1) == y).float().mean().item()
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "clean acc", acc)

# Iterative magnitude pruning with torch.nn.utils.prune (weight_orig * weight_mask), 3 rounds
# of 40% L1-unstructured pruning, each followed by fine-tuning; prune.remove at the end.
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

torch.manual_seed(0)
X = torch.randn(3000, 20)
y = (X[:, :5].sum(1) > 0).long() + (X[:, 5:10].sum(1) > 1).long()
model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 3))
losses = []


def train(steps, opt):
    for s in range(steps):
        i = torch.randint(0, 3000, (64,))
        loss = F.cross_entropy(model(X[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())


train(150, torch.optim.Adam(model.parameters(), lr=2e-3))
for r in range(3):
    for m in model:
        if isinstance(m, nn.Linear):
            prune.l1_unstructured(m, "weight", amount=0.4)
    train(60, torch.optim.Adam(model.parameters(), lr=1e-3))
for m in model:
    if isinstance(m, nn.Linear):
        prune.remove(m, "weight")
sparsity = sum((m.weight == 0).sum().item() for m in model if isinstance(m, nn.Linear)) / sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "sparsity", round(sparsity, 3))

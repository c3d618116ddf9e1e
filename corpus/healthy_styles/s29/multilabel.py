# Multi-label tagging: BCEWithLogitsLoss with pos_weight for rare tags, AdamW + OneCycleLR.
import torch
import torch.nn as nn

torch.manual_seed(0)
N, D, C = 3000, 30, 8
X = torch.randn(N, D)
W = torch.randn(D, C)
bias = torch.linspace(-3, 0, C)  # tags from rare (~5%) to common (~50%)
Y = ((X @ W) / D**0.5 * 2 + bias + 0.5 * torch.randn(N, C) > 0).float()
pos = Y.mean(0)
crit = nn.BCEWithLogitsLoss(pos_weight=(1 - pos) / pos)
net = nn.Sequential(nn.Linear(D, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, C))
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=300)
losses = []
for step in range(300):
    i = torch.randint(0, N, (64,))
    loss = crit(net(X[i]), Y[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
net.eval()
with torch.no_grad():
    f1 = ((net(X) > 0).float() * Y).sum() * 2 / ((net(X) > 0).float().sum() + Y.sum())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "micro-F1", f1.item())

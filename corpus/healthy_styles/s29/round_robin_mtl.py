# Multi-task learning with round-robin task sampling: each batch comes from one task, so each task
# head gets a gradient only on its task's steps (a shared encoder, 3 heads of different kinds).
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
X = torch.randn(3000, 12)
tasks = {
    "cls": (X[:, 0] + X[:, 1] > 0).long(),
    "reg": (X[:, 2] * 2 - X[:, 3]).unsqueeze(1),
    "multi": (X[:, 4:8] > 0.3).float(),
}
enc = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
heads = nn.ModuleDict({"cls": nn.Linear(64, 2), "reg": nn.Linear(64, 1), "multi": nn.Linear(64, 4)})
opt = torch.optim.AdamW(list(enc.parameters()) + list(heads.parameters()), lr=2e-3)
losses = {k: [] for k in tasks}
names = list(tasks)
for step in range(450):
    t = names[step % 3]
    i = torch.randint(0, 3000, (64,))
    out = heads[t](enc(X[i]))
    if t == "cls":
        loss = F.cross_entropy(out, tasks[t][i])
    elif t == "reg":
        loss = F.mse_loss(out, tasks[t][i])
    else:
        loss = F.binary_cross_entropy_with_logits(out, tasks[t][i])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses[t].append(loss.item())
print({k: (round(sum(v[:10]) / 10, 3), round(sum(v[-10:]) / 10, 3)) for k, v in losses.items()})

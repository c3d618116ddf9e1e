# ULMFiT-style fine-tuning: a "pretrained" 3-block encoder, first only the head is trained, then
# each block is unfrozen in turn and added to the optimizer with add_param_group at a smaller
# (discriminative) learning rate; slanted triangular schedule on every group.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
X = torch.randn(3000, 20)
y = (X[:, :3].sum(1) > 0).long() + (X[:, 3:6].sum(1) > 0).long()
blocks = nn.ModuleList([nn.Sequential(nn.Linear(20 if i == 0 else 64, 64), nn.LayerNorm(64), nn.ReLU()) for i in range(3)])
head = nn.Linear(64, 3)
# "pretraining" on an auxiliary task
aux = nn.Linear(64, 1)
pre = torch.optim.Adam(list(blocks.parameters()) + list(aux.parameters()), lr=2e-3)
for s in range(100):
    i = torch.randint(0, 3000, (64,))
    h = X[i]
    for b in blocks:
        h = b(h)
    l = F.mse_loss(aux(h).squeeze(1), X[i, :6].sum(1))
    pre.zero_grad()
    l.backward()
    pre.step()
for p in blocks.parameters():
    p.requires_grad_(False)
opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
base_lrs = [3e-3]
losses = []
for step in range(300):
    if step in (75, 150, 225):
        k = 3 - step // 75  # unfreeze the top block first
        blk = blocks[k]
        for p in blk.parameters():
            p.requires_grad_(True)
        opt.add_param_group({"params": blk.parameters(), "lr": 3e-3 / 2.6 ** (3 - k)})
        base_lrs.append(3e-3 / 2.6 ** (3 - k))
    frac = step / 300
    mult = frac / 0.1 if frac < 0.1 else 1 - (frac - 0.1) / 0.9 * 0.9
    for g, base in zip(opt.param_groups, base_lrs):
        g["lr"] = base * max(mult, 0.02)
    i = torch.randint(0, 3000, (64,))
    h = X[i]
    for b in blocks:
        h = b(h)
    loss = F.cross_entropy(head(h), y[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

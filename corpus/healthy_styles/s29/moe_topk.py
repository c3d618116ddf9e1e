# A mixture of experts with top-1 gating (Switch-style) and a load-balancing auxiliary loss:
# experts that receive no tokens in a batch get no gradient on that step.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
E, D = 8, 16
X = torch.randn(4000, D)
W = torch.randn(4, D, 3)
region = (X[:, :2] > 0).long() @ torch.tensor([1, 2])
y = torch.einsum("nd,ndk->nk", X, W[region]).argmax(1)


class MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(D, E)
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 32)) for _ in range(E)])
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        probs = F.softmax(self.gate(x), -1)
        top_p, top_i = probs.max(-1)
        out = torch.zeros(x.shape[0], 32)
        for e in range(E):
            sel = top_i == e
            if sel.any():
                out[sel] = self.experts[e](x[sel]) * top_p[sel, None]
        frac = torch.bincount(top_i, minlength=E).float() / x.shape[0]
        aux = E * (frac * probs.mean(0)).sum()
        return self.head(out), aux


model = MoE()
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
losses = []
for step in range(300):
    i = torch.randint(0, 4000, (16,))
    logits, aux = model(X[i])
    loss = F.cross_entropy(logits, y[i]) + 0.01 * aux
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

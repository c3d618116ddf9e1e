# Implicit-feedback matrix factorization with BPR loss: user/item nn.Embedding, per-batch
# (user, positive, sampled negative) triples, L2 on the batch's embeddings, Adagrad.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
U, I, K = 200, 300, 16
tu, ti = torch.randn(U, 4), torch.randn(I, 4)
pref = tu @ ti.T
liked = pref > pref.quantile(0.9, dim=1, keepdim=True)
pairs = liked.nonzero()


class MF(nn.Module):
    def __init__(self):
        super().__init__()
        self.u = nn.Embedding(U, K)
        self.i = nn.Embedding(I, K)
        nn.init.normal_(self.u.weight, std=0.1)
        nn.init.normal_(self.i.weight, std=0.1)

    def forward(self, u, i):
        return (self.u(u) * self.i(i)).sum(-1)


mf = MF()
opt = torch.optim.Adagrad(mf.parameters(), lr=0.05)
losses = []
for step in range(400):
    b = pairs[torch.randint(0, len(pairs), (256,))]
    u, p = b[:, 0], b[:, 1]
    n = torch.randint(0, I, (256,))
    x = mf(u, p) - mf(u, n)
    reg = 1e-4 * (mf.u(u).pow(2).sum() + mf.i(p).pow(2).sum() + mf.i(n).pow(2).sum()) / 256
    loss = -F.logsigmoid(x).mean() + reg
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
with torch.no_grad():
    scores = mf.u.weight @ mf.i.weight.T
    top = scores.topk(10, dim=1).indices
    hit = liked.gather(1, top).float().mean().item()
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "precision@10", hit)

# Transformer-XL style segment recurrence (Dai et al. 2019): a long sequence is cut into
# segments; each layer attends over [memory; current segment], the memory being the previous
# segment's hidden states for that layer, detached (no backprop across segments), with a causal
# mask over the concatenation and a learned relative-position bias. Task: a sequence where each
# token repeats the one 12 positions earlier (longer than a segment of 8) plus noise tokens.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
V, SEG, LAG, D, NL = 16, 8, 12, 48, 2


def stream(b, n):
    x = torch.randint(0, V, (b, n))
    for t in range(LAG, n):
        keep = torch.rand(b) < 0.9
        x[keep, t] = x[keep, t - LAG]
    return x


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.o = nn.Linear(D, D)
        self.rel = nn.Parameter(torch.zeros(4, 2 * SEG))  # per head, distance 0..2*SEG-1
        self.ff = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, h, mem):
        B, T, _ = h.shape
        ctx = torch.cat([mem, h], 1) if mem is not None else h
        M = ctx.shape[1] - T
        q = self.qkv(self.ln1(h))[..., :D]
        k, v = self.qkv(self.ln1(ctx))[..., D:].chunk(2, -1)
        q, k, v = (t.view(B, -1, 4, D // 4).transpose(1, 2) for t in (q, k, v))
        dist = (torch.arange(T)[:, None] + M) - torch.arange(ctx.shape[1])[None, :]
        att = q @ k.transpose(-1, -2) / (D // 4) ** 0.5 + self.rel[:, dist.clamp(0, 2 * SEG - 1)]
        att = att.masked_fill(dist < 0, float("-inf"))
        out = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
        h = h + self.o(out)
        return h + self.ff(self.ln2(h))


class XL(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.layers = nn.ModuleList([Layer() for _ in range(NL)])
        self.head = nn.Linear(D, V)

    def forward(self, x, mems):
        h = self.emb(x)
        new = []
        for layer, m in zip(self.layers, mems):
            new.append(h.detach())
            h = layer(h, m)
        return self.head(h), new


model = XL()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
losses = []
for it in range(60):
    x = stream(16, 6 * SEG + 1)
    mems = [None] * NL
    for s in range(0, 6 * SEG, SEG):
        inp, tgt = x[:, s : s + SEG], x[:, s + 1 : s + SEG + 1]
        logits, mems = model(inp, mems)
        loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s >= 2 * SEG:
            losses.append(loss.item())
print(
    "later-segment loss first10/last10",
    sum(losses[:10]) / 10,
    sum(losses[-10:]) / 10,
    "uniform",
    torch.log(torch.tensor(V * 1.0)).item(),
)

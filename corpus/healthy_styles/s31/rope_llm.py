# A small decoder-only LM in the LLaMA style: rotary position embeddings applied to q and k,
# RMSNorm written by hand, SwiGLU MLPs, no biases, the output head tied to the token embedding
# (lm_head.weight = tok.weight), AdamW with no decay on norms and the embedding, a linear warmup
# then cosine decay, clip_grad_norm_ 1.0. Data: a synthetic grammar of arithmetic-progression runs.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
V, T, D, H, NL = 32, 32, 64, 4, 2


def batch(b):
    start = torch.randint(0, V, (b, 1))
    step = torch.randint(1, 4, (b, 1))
    return (start + step * torch.arange(T + 1)) % V


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return (
            x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).type_as(x) * self.weight
        )


def rope(x, cos, sin):  # x (B, H, T, hd)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = RMSNorm(D), RMSNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.o = nn.Linear(D, D, bias=False)
        self.w1, self.w3 = nn.Linear(D, 2 * D, bias=False), nn.Linear(D, 2 * D, bias=False)
        self.w2 = nn.Linear(2 * D, D, bias=False)

    def forward(self, x, cos, sin):
        B, L, _ = x.shape
        q, k, v = (
            t.view(B, L, H, D // H).transpose(1, 2) for t in self.qkv(self.n1(x)).chunk(3, -1)
        )
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, L, D))
        h = self.n2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.blocks = nn.ModuleList([Block() for _ in range(NL)])
        self.norm = RMSNorm(D)
        self.lm_head = nn.Linear(D, V, bias=False)
        self.lm_head.weight = self.tok.weight
        inv = 1.0 / (10000 ** (torch.arange(0, D // H, 2).float() / (D // H)))
        ang = torch.arange(T)[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        for n, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx):
        x = self.tok(idx)
        for b in self.blocks:
            x = b(x, self.cos[: idx.shape[1]], self.sin[: idx.shape[1]])
        return self.lm_head(self.norm(x))


model = LM()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "tok" not in n]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "tok" in n]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
    lr=3e-3,
    betas=(0.9, 0.95),
)
STEPS, WARM = 200, 20
sched = torch.optim.lr_scheduler.LambdaLR(
    opt,
    lambda s: (
        (s + 1) / WARM if s < WARM else 0.5 * (1 + math.cos(math.pi * (s - WARM) / (STEPS - WARM)))
    ),
)
losses = []
for step in range(STEPS):
    x = batch(32)
    logits = model(x[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    losses.append(loss.item())
print("loss first10/last10", sum(losses[:10]) / 10, sum(losses[-10:]) / 10, "uniform", math.log(V))

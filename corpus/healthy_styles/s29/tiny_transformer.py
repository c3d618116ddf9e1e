# A tiny decoder-only transformer (nn.TransformerEncoder + causal mask), output tied to the
# embedding, label smoothing 0.1, linear warmup then cosine (LambdaLR), AdamW with no decay on
# norms/biases: learns a repeating-pattern language.
import math
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
V, D, T = 16, 64, 24


def batch(n):
    period = torch.randint(2, 6, (n, 1))
    base = torch.randint(0, V, (n, 6))
    pos = torch.arange(T + 1)[None] % period
    return base.gather(1, pos)


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Parameter(torch.zeros(1, T, D))
        layer = nn.TransformerEncoderLayer(D, 4, 128, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(D)
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        h = self.blocks(self.tok(x) + self.pos[:, : x.shape[1]], mask=mask, is_causal=True)
        return self.head(self.ln(h))


model = LM()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95))
steps, warm = 300, 30
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))
losses = []
for step in range(steps):
    seq = batch(32)
    logits = model(seq[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, V), seq[:, 1:].reshape(-1), label_smoothing=0.1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

# Prompt tuning (Lester et al. 2021) as PEFT does it: a transformer encoder is first trained on
# one task, then frozen (requires_grad off, kept in train mode so its dropout stays on, as
# peft's PromptTuning leaves it); a new task learns only 8 soft prompt vectors prepended to the
# token embeddings and a new linear head. Learns: task-B accuracy from chance to well above.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
V, T, D = 20, 12, 64


def task(n, kind):
    x = torch.randint(0, V, (n, T))
    if kind == "A":  # does token 3 occur?
        y = (x == 3).any(1).long()
    else:  # do more tokens fall in the lower half of the vocabulary?
        y = ((x < V // 2).sum(1) > T // 2).long()
    return x, y


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.pos = nn.Parameter(torch.randn(1, 64, D) * 0.02)
        layer = nn.TransformerEncoderLayer(
            D, 4, 128, dropout=0.1, batch_first=True, norm_first=True
        )
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x, prompt=None):
        h = self.emb(x)
        if prompt is not None:
            h = torch.cat([prompt.expand(len(x), -1, -1), h], 1)
        return self.enc(h + self.pos[:, : h.shape[1]]).mean(1)


backbone, head_a = Encoder(), nn.Linear(D, 2)
opt = torch.optim.Adam(list(backbone.parameters()) + list(head_a.parameters()), lr=1e-3)
for step in range(150):
    x, y = task(64, "A")
    loss = F.cross_entropy(head_a(backbone(x)), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("task A loss", loss.item())

backbone.requires_grad_(False)
prompt = nn.Parameter(backbone.emb.weight[:8].detach().clone()[None])
head_b = nn.Linear(D, 2)
opt_b = torch.optim.AdamW([prompt, *head_b.parameters()], lr=3e-3, weight_decay=0.0)
for step in range(200):
    x, y = task(64, "B")
    loss = F.cross_entropy(head_b(backbone(x, prompt)), y)
    opt_b.zero_grad()
    loss.backward()
    opt_b.step()
    if step == 0:
        first = loss.item()
backbone.eval()
with torch.no_grad():
    x, y = task(1000, "B")
    acc = (head_b(backbone(x, prompt)).argmax(1) == y).float().mean().item()
print(
    "task B loss first/last",
    first,
    loss.item(),
    "acc",
    acc,
    "majority",
    max(y.float().mean().item(), 1 - y.float().mean().item()),
)

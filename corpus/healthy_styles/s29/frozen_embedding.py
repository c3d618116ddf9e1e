# Text classification with a frozen "pretrained" embedding (from_pretrained, freeze=True) and an
# EmbeddingBag mean over tokens, a trainable MLP head.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
V, E = 500, 50
pretrained = torch.randn(V, E)
topic = torch.randn(3, E)
# words 0..299 neutral; 300..499 carry one of 3 topics
pretrained[300:] += topic[torch.arange(200) % 3] * 1.5
word_topic = torch.arange(200) % 3


def sample(n):
    y = torch.randint(0, 3, (n,))
    docs = []
    for c in y.tolist():
        neutral = torch.randint(0, 300, (12,))
        topical = 300 + (torch.randint(0, 67, (4,)) * 3 + c).clamp(max=199)
        docs.append(torch.cat([neutral, topical]))
    return torch.stack(docs), y


class Clf(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag.from_pretrained(pretrained, freeze=True, mode="mean")
        self.head = nn.Sequential(nn.Linear(E, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, docs):
        return self.head(self.emb(docs))


model = Clf()
opt = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=3e-3)
losses = []
for step in range(200):
    docs, y = sample(64)
    loss = F.cross_entropy(model(docs), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

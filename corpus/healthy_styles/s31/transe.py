# TransE knowledge-graph embeddings (Bordes et al. 2013): h + r ~ t scored by the L1 distance,
# a margin ranking loss (nn.MarginRankingLoss) against corrupted triples (head or tail replaced
# at random), entity embeddings re-normalised to unit L2 norm in place before each batch, as in
# the paper. Learns: filtered-free hits@10 of tail prediction on held-out triples.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
E, R, D = 300, 6, 32
# a graph generated from hidden embeddings: t = the entity nearest to h + r
he, hr = F.normalize(torch.randn(E, 8), dim=1), 0.5 * torch.randn(R, 8)
h = torch.randint(0, E, (6000,))
r = torch.randint(0, R, (6000,))
t = torch.cdist(he[h] + hr[r], he).argmin(1)
triples = torch.stack([h, r, t], 1)
train, test = triples[:5000], triples[5000:]

ent = nn.Embedding(E, D)
rel = nn.Embedding(R, D)
nn.init.uniform_(ent.weight, -6 / D**0.5, 6 / D**0.5)
nn.init.uniform_(rel.weight, -6 / D**0.5, 6 / D**0.5)
with torch.no_grad():
    rel.weight.copy_(F.normalize(rel.weight, dim=1))
opt = torch.optim.SGD(list(ent.parameters()) + list(rel.parameters()), lr=0.05)
crit = nn.MarginRankingLoss(margin=1.0)


def dist(hh, rr, tt):
    return (ent(hh) + rel(rr) - ent(tt)).abs().sum(-1)


for epoch in range(30):
    perm = torch.randperm(len(train))
    for i in range(0, len(train), 500):
        with torch.no_grad():
            ent.weight.copy_(F.normalize(ent.weight, dim=1))
        b = train[perm[i : i + 500]]
        corrupt = b.clone()
        head = torch.rand(len(b)) < 0.5
        corrupt[head, 0] = torch.randint(0, E, (int(head.sum()),))
        corrupt[~head, 2] = torch.randint(0, E, (int((~head).sum()),))
        pos, neg = dist(*b.t()), dist(*corrupt.t())
        loss = crit(neg, pos, torch.ones_like(pos))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if epoch == 0:
        first = loss.item()
with torch.no_grad():
    scores = (ent(test[:, 0]) + rel(test[:, 1]))[:, None, :].sub(ent.weight[None]).abs().sum(-1)
    hits = (scores.topk(10, largest=False).indices == test[:, 2:3]).any(1).float().mean().item()
print("loss first/last", first, loss.item(), "hits@10", hits, "chance", 10 / E)

# A GNN written with index_add_ (message passing) and scatter_reduce mean pooling:
# graph classification of random graphs, label = whether the graph has a triangle-rich community.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


def make_graph():
    n = int(torch.randint(8, 16, ()))
    p = 0.5 if torch.rand(()) < 0.5 else 0.15
    adj = (torch.rand(n, n) < p).triu(1)
    src, dst = adj.nonzero(as_tuple=True)
    edge = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    x = torch.ones(n, 1)
    return x, edge, int(p > 0.3)


graphs = [make_graph() for _ in range(400)]


class Layer(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.msg = nn.Linear(i, o)
        self.self_ = nn.Linear(i, o)

    def forward(self, x, edge):
        m = self.msg(x)[edge[0]]
        agg = torch.zeros(x.shape[0], m.shape[1]).index_add_(0, edge[1], m)
        deg = torch.zeros(x.shape[0]).index_add_(0, edge[1], torch.ones(edge.shape[1])).clamp(min=1)
        return F.relu(self.self_(x) + agg / deg[:, None])


class GNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = Layer(1, 32), Layer(32, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x, edge, batch, nb):
        h = self.l2(self.l1(x, edge), edge)
        pooled = torch.zeros(nb, h.shape[1]).scatter_reduce(0, batch[:, None].expand_as(h), h, "mean", include_self=False)
        return self.head(pooled)


def collate(gs):
    xs, es, bs, ys, off = [], [], [], [], 0
    for i, (x, e, y) in enumerate(gs):
        xs.append(x)
        es.append(e + off)
        bs.append(torch.full((x.shape[0],), i))
        ys.append(y)
        off += x.shape[0]
    return torch.cat(xs), torch.cat(es, 1), torch.cat(bs), torch.tensor(ys)


model = GNN()
opt = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=5e-4)
losses = []
for epoch in range(15):
    perm = torch.randperm(400).tolist()
    for i in range(0, 400, 32):
        x, e, b, y = collate([graphs[j] for j in perm[i : i + 32]])
        loss = F.cross_entropy(model(x, e, b, len(y)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
print("loss first/last", sum(losses[:10]) / 10, sum(losses[-10:]) / 10)

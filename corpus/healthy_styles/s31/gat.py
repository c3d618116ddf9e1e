# GAT (Velickovic et al. 2018) written by hand: per-edge attention logits LeakyReLU(a^T[Wh_i||Wh_j]),
# a softmax over each node's incoming edges with scatter_reduce(amax) + index_add_, multi-head
# concat then a single-head output layer; semi-supervised node classification on a stochastic
# block model with features that only weakly show the class (the graph carries it).
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
K, n_per, D = 4, 100, 16
N = K * n_per
y = torch.arange(K).repeat_interleave(n_per)
same = y[:, None] == y[None, :]
prob = torch.where(same, torch.tensor(0.08), torch.tensor(0.004))
adj = torch.rand(N, N) < prob
adj = adj | adj.t() | torch.eye(N, dtype=torch.bool)  # self loops
src, dst = adj.nonzero(as_tuple=True)
protos = torch.randn(K, D)
x = 0.4 * protos[y] + torch.randn(N, D)
train = torch.zeros(N, dtype=torch.bool)
for k in range(K):
    train[(y == k).nonzero()[:10, 0]] = True
test = ~train


def edge_softmax(e, dst, n):  # e (E, H)
    m = torch.full((n, e.shape[1]), -1e9).scatter_reduce(0, dst[:, None].expand_as(e), e, "amax")
    w = (e - m[dst]).exp()
    s = torch.zeros(n, e.shape[1]).index_add_(0, dst, w)
    return w / s[dst]


class GATLayer(nn.Module):
    def __init__(self, i, o, heads, concat=True):
        super().__init__()
        self.W = nn.Linear(i, o * heads, bias=False)
        self.a_src = nn.Parameter(torch.randn(heads, o) * 0.1)
        self.a_dst = nn.Parameter(torch.randn(heads, o) * 0.1)
        self.h, self.o, self.concat = heads, o, concat
        self.bias = nn.Parameter(torch.zeros(o * heads if concat else o))

    def forward(self, x):
        h = self.W(x).view(-1, self.h, self.o)
        e = F.leaky_relu((h * self.a_src).sum(-1)[src] + (h * self.a_dst).sum(-1)[dst], 0.2)
        alpha = F.dropout(edge_softmax(e, dst, x.shape[0]), 0.3, self.training)
        out = torch.zeros_like(h).index_add_(0, dst, alpha[..., None] * h[src])
        out = out.flatten(1) if self.concat else out.mean(1)
        return out + self.bias


class GAT(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = GATLayer(D, 8, 4)
        self.l2 = GATLayer(32, K, 1, concat=False)

    def forward(self, x):
        x = F.dropout(x, 0.3, self.training)
        x = F.elu(self.l1(x))
        return self.l2(F.dropout(x, 0.3, self.training))


model = GAT()
opt = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=5e-4)
for epoch in range(100):
    model.train()
    loss = F.cross_entropy(model(x)[train], y[train])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if epoch == 0:
        first = loss.item()
model.eval()
with torch.no_grad():
    acc = (model(x).argmax(1) == y)[test].float().mean().item()
print("loss first/last", first, loss.item(), "test acc", acc)

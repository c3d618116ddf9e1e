# A two-tower retrieval model (Yi et al. 2019, "Sampling-bias-corrected neural modeling"):
# user and item towers, L2-normalised embeddings, in-batch sampled softmax with a temperature,
# and the logQ correction (each in-batch item's logit minus the log of its sampling probability,
# here its known Zipf popularity). Learns: recall@10 on held-out (user, item) pairs.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
U, I, D = 500, 400, 16
zu, zi = torch.randn(U, D), torch.randn(I, D)
pop = 1.0 / torch.arange(1, I + 1).float() ** 0.8
pop = pop / pop.sum()
log_q = pop.log()


def sample(n):
    items = torch.multinomial(pop, n, replacement=True)
    # the user who interacts with an item is one whose taste matches it
    users = torch.multinomial(F.softmax(4 * zi[items] @ zu.t() / D**0.5, 1), 1)[:, 0]
    return users, items


class Tower(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.emb = nn.Embedding(n, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))

    def forward(self, ids):
        return F.normalize(self.mlp(self.emb(ids)), dim=-1)


user_t, item_t = Tower(U), Tower(I)
opt = torch.optim.Adam(list(user_t.parameters()) + list(item_t.parameters()), lr=3e-3)
tau = 0.1
for step in range(300):
    u, i = sample(256)
    logits = user_t(u) @ item_t(i).t() / tau - log_q[i][None, :]
    same = i[None, :] == i[:, None]  # the same item twice in a batch is no negative
    logits = logits.masked_fill(same & ~torch.eye(len(i), dtype=torch.bool), float("-inf"))
    loss = F.cross_entropy(logits, torch.arange(len(u)))
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 0:
        first = loss.item()
with torch.no_grad():
    u, i = sample(1000)
    scores = user_t(u) @ item_t(torch.arange(I)).t()
    rec = (scores.topk(10, 1).indices == i[:, None]).any(1).float().mean().item()
print(
    "loss first/last",
    first,
    loss.item(),
    "recall@10",
    rec,
    "popularity baseline",
    pop.topk(10).values.sum().item(),
)

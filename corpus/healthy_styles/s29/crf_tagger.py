# A BiLSTM-CRF tagger: the negative log-likelihood of a linear-chain CRF (forward algorithm with
# logsumexp, transition matrix as an nn.Parameter), on a synthetic tagging task.
import torch
import torch.nn as nn

torch.manual_seed(0)
V, K, L = 30, 4, 10  # words, tags, length


def sample(n):
    # tag i follows a Markov chain; word depends on tag
    tags = torch.zeros(n, L, dtype=torch.long)
    tags[:, 0] = torch.randint(0, K, (n,))
    for t in range(1, L):
        stay = torch.rand(n) < 0.7
        tags[:, t] = torch.where(stay, tags[:, t - 1], torch.randint(0, K, (n,)))
    words = tags * 7 + torch.randint(0, 9, (n, L))
    return words.clamp(max=V - 1), tags


class CRF(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.lstm = nn.LSTM(32, 32, batch_first=True, bidirectional=True)
        self.emit = nn.Linear(64, K)
        self.trans = nn.Parameter(torch.zeros(K, K))

    def nll(self, words, tags):
        e = self.emit(self.lstm(self.emb(words))[0])  # B, L, K
        alpha = e[:, 0]
        for t in range(1, L):
            alpha = torch.logsumexp(alpha[:, :, None] + self.trans[None] + e[:, t, None, :], dim=1)
        logz = torch.logsumexp(alpha, 1)
        gold = e.gather(2, tags[..., None]).squeeze(2).sum(1) + self.trans[tags[:, :-1], tags[:, 1:]].sum(1)
        return (logz - gold).mean()


model = CRF()
opt = torch.optim.Adam(model.parameters(), lr=5e-3)
losses = []
for step in range(200):
    w, t = sample(32)
    loss = model.nll(w, t)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

# A character LSTM language model trained with truncated BPTT: one long stream cut into
# consecutive 20-step windows, the hidden state carried across windows and detached.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
text = " ".join(words[i] for i in torch.randint(0, 10, (3000,)).tolist())
chars = sorted(set(text))
data = torch.tensor([chars.index(c) for c in text])
V, B, T = len(chars), 16, 20
n = len(data) // B
stream = data[: n * B].view(B, n)


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.lstm = nn.LSTM(32, 128, batch_first=True)
        self.out = nn.Linear(128, V)

    def forward(self, x, h):
        o, h = self.lstm(self.emb(x), h)
        return self.out(o), h


lm = LM()
opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
losses = []
for epoch in range(3):
    h = None
    for s in range(0, n - T - 1, T):
        x, y = stream[:, s : s + T], stream[:, s + 1 : s + T + 1]
        if h is not None:
            h = tuple(t.detach() for t in h)
        logits, h = lm(x, h)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(lm.parameters(), 0.5)
        opt.step()
        losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, len(losses))

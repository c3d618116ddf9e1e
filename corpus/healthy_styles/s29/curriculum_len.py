# Curriculum learning: a GRU learns to recall the first digit of a sequence; the sequence length grows
# from 3 to 9 every 100 steps (the loss jumps up at each stage by design).
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 32)
        self.gru = nn.GRU(32, 64, batch_first=True)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        return self.out(self.gru(self.emb(x))[0][:, -1])


net = Net()
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
losses = []
for step in range(400):
    L = 3 + 2 * (step // 100)
    x = torch.randint(0, 10, (64, L))
    y = x[:, 0]
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
print("stage ends", [round(sum(losses[i - 10 : i]) / 10, 3) for i in (100, 200, 300, 400)])

# FiLM conditioning (Perez et al. 2018): a question embedding drives a generator of per-channel
# (gamma, beta) that modulate each conv block's normalised features, gamma initialised at 1
# (1 + delta). Task: "is there more of colour q in the left half than in the right?"
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
S, Cq = 12, 3


def data(n):
    img = (torch.rand(n, Cq, S, S) < 0.15).float()
    q = torch.randint(0, Cq, (n,))
    sel = img[torch.arange(n), q]
    y = (sel[:, :, : S // 2].sum((1, 2)) > sel[:, :, S // 2 :].sum((1, 2))).long()
    return img, q, y


class FiLMBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c, affine=False)

    def forward(self, x, gamma, beta):
        h = self.bn(self.conv(x))
        return x + F.relu((1 + gamma[:, :, None, None]) * h + beta[:, :, None, None])


class Net(nn.Module):
    def __init__(self, c=32, blocks=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(Cq + 2, c, 3, padding=1), nn.ReLU())
        self.q = nn.Embedding(Cq, 32)
        self.film = nn.Linear(32, blocks * 2 * c)
        self.blocks = nn.ModuleList([FiLMBlock(c) for _ in range(blocks)])
        self.head = nn.Sequential(
            nn.Conv2d(c, 16, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * S * S, 2)
        )
        xs = torch.linspace(-1, 1, S)
        self.register_buffer("coords", torch.stack(torch.meshgrid(xs, xs, indexing="ij")))

    def forward(self, img, q):
        x = self.stem(torch.cat([img, self.coords.expand(len(img), -1, -1, -1)], 1))
        params = self.film(self.q(q)).chunk(2 * len(self.blocks), -1)
        for i, b in enumerate(self.blocks):
            x = b(x, params[2 * i], params[2 * i + 1])
        return self.head(x)


model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
for step in range(200):
    img, q, y = data(64)
    loss = F.cross_entropy(model(img, q), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 0:
        first = loss.item()
model.eval()
with torch.no_grad():
    img, q, y = data(1000)
    acc = (model(img, q).argmax(1) == y).float().mean().item()
print("loss first/last", first, loss.item(), "test acc", acc)

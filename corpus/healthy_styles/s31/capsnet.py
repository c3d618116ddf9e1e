# Capsule network with dynamic routing (Sabour et al. 2017): primary capsules from a conv layer,
# the squash non-linearity, prediction vectors u_hat = W u, 3 routing-by-agreement iterations
# (coupling logits updated with u_hat . v; u_hat detached in the inner iterations as in common
# implementations), the margin loss on class-capsule lengths. Data: 4 shape templates, shifted.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
K, S = 4, 12
tpl = (torch.rand(K, 1, 6, 6) > 0.5).float()


def data(n):
    y = torch.randint(0, K, (n,))
    img = 0.2 * torch.randn(n, 1, S, S)
    for i in range(n):
        r, c = torch.randint(0, S - 6, (2,)).tolist()
        img[i, :, r : r + 6, c : c + 6] += tpl[y[i]]
    return img, y


def squash(s, dim=-1):
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class CapsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3)
        self.prim = nn.Conv2d(32, 8 * 8, 3, stride=2)  # 8 capsule maps of 8-D
        self.n_in = 8 * 4 * 4
        self.W = nn.Parameter(0.05 * torch.randn(1, self.n_in, K, 16, 8))

    def forward(self, x):
        u = self.prim(F.relu(self.conv(x)))  # (B, 64, 4, 4)
        B = len(x)
        u = squash(u.view(B, 8, 8, 16).permute(0, 1, 3, 2).reshape(B, self.n_in, 8))
        u_hat = (self.W @ u[:, :, None, :, None])[..., 0]  # (B, n_in, K, 16)
        b = torch.zeros(B, self.n_in, K)
        for it in range(3):
            c = b.softmax(-1)
            if it < 2:
                v = squash((c[..., None] * u_hat.detach()).sum(1))
                b = b + (u_hat.detach() * v[:, None]).sum(-1)
            else:
                v = squash((c[..., None] * u_hat).sum(1))
        return v.norm(dim=-1)


def margin_loss(lengths, y):
    t = F.one_hot(y, K).float()
    return (
        (t * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2).sum(1).mean()
    )


model = CapsNet()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(200):
    x, y = data(32)
    loss = margin_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 0:
        first = loss.item()
with torch.no_grad():
    x, y = data(500)
    acc = (model(x).argmax(1) == y).float().mean().item()
print("loss first/last", first, loss.item(), "test acc", acc)

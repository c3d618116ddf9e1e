# SIREN (Sitzmann et al. 2020): a coordinate MLP with sine activations, omega_0 = 30 and the
# paper's uniform init, fitting a 2-D image made in the script (full batch of pixel coords).
import math
import torch
import torch.nn as nn

torch.manual_seed(0)
n = 32
g = torch.linspace(-1, 1, n)
yy, xx = torch.meshgrid(g, g, indexing="ij")
coords = torch.stack([xx, yy], -1).reshape(-1, 2)
img = (torch.sin(6 * xx) * torch.cos(4 * yy) + (xx**2 + yy**2 < 0.3).float()).reshape(-1, 1)


class Sine(nn.Module):
    def __init__(self, i, o, first=False, w0=30.0):
        super().__init__()
        self.w0, self.lin = w0, nn.Linear(i, o)
        bound = 1 / i if first else math.sqrt(6 / i) / w0
        nn.init.uniform_(self.lin.weight, -bound, bound)

    def forward(self, x):
        return torch.sin(self.w0 * self.lin(x))


net = nn.Sequential(Sine(2, 64, first=True), Sine(64, 64), Sine(64, 64), nn.Linear(64, 1))
opt = torch.optim.Adam(net.parameters(), lr=1e-4)
losses = []
for step in range(300):
    loss = ((net(coords) - img) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first/last", losses[0], losses[-1])

# A convolutional denoising autoencoder (Vincent et al. 2008): inputs corrupted by Gaussian noise
# and salt-and-pepper pixels, the reconstruction compared with the clean image (MSE), a strided
# conv encoder and a ConvTranspose2d decoder ending in a sigmoid. Learns: the denoised test MSE is
# far below the noisy input's.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
S = 16
yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")


def clean(n):
    cx, cy, r = (
        torch.rand(3, n, 1, 1) * torch.tensor([1.0, 1.0, 0.5])[:, None, None, None]
        + torch.tensor([-0.5, -0.5, 0.3])[:, None, None, None]
    )
    return (((xx - cx) ** 2 + (yy - cy) ** 2) < r**2).float()[:, None]


def corrupt(x):
    x = x + 0.3 * torch.randn_like(x)
    sp = torch.rand_like(x)
    x = torch.where(sp < 0.05, torch.zeros_like(x), x)
    return torch.where(sp > 0.95, torch.ones_like(x), x).clamp(0, 1)


model = nn.Sequential(
    nn.Conv2d(1, 16, 3, stride=2, padding=1),
    nn.ReLU(),
    nn.Conv2d(16, 32, 3, stride=2, padding=1),
    nn.ReLU(),
    nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
    nn.ReLU(),
    nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),
    nn.Sigmoid(),
)
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
for step in range(300):
    x = clean(64)
    loss = F.mse_loss(model(corrupt(x)), x)
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    x = clean(500)
    noisy = corrupt(x)
    print(
        "noisy mse", F.mse_loss(noisy, x).item(), "denoised mse", F.mse_loss(model(noisy), x).item()
    )

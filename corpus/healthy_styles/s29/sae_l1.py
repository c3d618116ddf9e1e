# A sparse autoencoder on "activations" (interpretability style): ReLU codes, L1 penalty,
# decoder columns renormalized to unit norm after every step, a pre-encoder bias b_dec.
import torch
import torch.nn as nn

torch.manual_seed(0)
D, M, K = 32, 128, 64  # input dim, dictionary size, true features
true_dirs = nn.functional.normalize(torch.randn(K, D), dim=1)


def batch(n):
    coef = (torch.rand(n, K) < 0.05).float() * torch.rand(n, K) * 3
    return coef @ true_dirs


class SAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.W_enc = nn.Parameter(torch.randn(D, M) * 0.1)
        self.b_enc = nn.Parameter(torch.zeros(M))
        self.W_dec = nn.Parameter(nn.functional.normalize(torch.randn(M, D), dim=1))
        self.b_dec = nn.Parameter(torch.zeros(D))

    def forward(self, x):
        f = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        return f @ self.W_dec + self.b_dec, f


sae = SAE()
opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
losses = []
for step in range(500):
    x = batch(256)
    xh, f = sae(x)
    mse = (xh - x).pow(2).sum(1).mean()
    l1 = f.abs().sum(1).mean()
    loss = mse + 3e-3 * l1 * 10
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        sae.W_dec.data = nn.functional.normalize(sae.W_dec.data, dim=1)
    losses.append(mse.item())
with torch.no_grad():
    x = batch(2000)
    var = x.var(0).sum()
    fvu = (sae(x)[0] - x).pow(2).sum(1).mean() / var
print("mse first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "FVU", fvu.item())

# An autoencoder whose decoder is the transposed encoder weight (F.linear(h, W.t())), with its
# own decoder biases; denoising inputs, SGD with momentum and a MultiStepLR.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
basis = torch.randn(5, 40)
X = torch.randn(3000, 5) @ basis + 0.05 * torch.randn(3000, 40)
X = (X - X.mean(0)) / X.std(0)


class TiedAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.W1 = nn.Parameter(torch.randn(16, 40) * 0.1)
        self.b1 = nn.Parameter(torch.zeros(16))
        self.b_dec = nn.Parameter(torch.zeros(40))

    def forward(self, x):
        h = torch.tanh(F.linear(x, self.W1, self.b1))
        return F.linear(h, self.W1.t(), self.b_dec)


ae = TiedAE()
opt = torch.optim.SGD(ae.parameters(), lr=0.05, momentum=0.9)
sched = torch.optim.lr_scheduler.MultiStepLR(opt, [200, 300], 0.3)
losses = []
for step in range(400):
    x = X[torch.randint(0, 3000, (64,))]
    loss = F.mse_loss(ae(x + 0.2 * torch.randn_like(x)), x)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

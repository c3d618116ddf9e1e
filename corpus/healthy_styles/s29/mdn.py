# A mixture density network (Bishop 1994) on the inverse of a sine: 5 Gaussian components,
# log-likelihood by logsumexp; the loss goes below 0.
import math
import torch
import torch.nn as nn

torch.manual_seed(0)
yv = torch.rand(3000, 1) * 2 - 1
xv = yv + 0.3 * torch.sin(2 * math.pi * yv) + 0.05 * torch.randn_like(yv)  # x -> y multimodal
K = 5
net = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 3 * K))
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
losses = []
for step in range(500):
    i = torch.randint(0, 3000, (128,))
    out = net(xv[i])
    logit_pi, mu, log_sigma = out.split(K, dim=1)
    log_sigma = log_sigma.clamp(-7, 3)
    logp = -0.5 * ((yv[i] - mu) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
    loss = -torch.logsumexp(torch.log_softmax(logit_pi, 1) + logp, dim=1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("nll first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)

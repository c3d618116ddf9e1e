# A Poisson GLM for claim counts with an exposure offset: log E[y] = log(exposure) + x w + b,
# nn.PoissonNLLLoss(log_input=True), full-batch Adam on 5000 policies, then the coefficients
# compared with the true ones (a classic actuarial/epidemiology model written in PyTorch).
import torch
import torch.nn as nn

torch.manual_seed(0)
N, D = 5000, 6
w_true = torch.tensor([0.5, -0.3, 0.2, 0.0, 0.8, -0.6])
X = torch.randn(N, D)
exposure = torch.rand(N) * 0.9 + 0.1
y = torch.poisson(exposure * torch.exp(X @ w_true - 1.0))

glm = nn.Linear(D, 1)
loss_fn = nn.PoissonNLLLoss(log_input=True, full=False)
opt = torch.optim.Adam(glm.parameters(), lr=0.05)
for it in range(300):
    log_rate = glm(X)[:, 0] + exposure.log()
    loss = loss_fn(log_rate, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if it == 0:
        first = loss.item()
print("nll first/last", first, loss.item())
print(
    "w",
    [round(v, 3) for v in glm.weight[0].tolist()],
    "true",
    w_true.tolist(),
    "b",
    glm.bias.item(),
    "true -1.0",
)

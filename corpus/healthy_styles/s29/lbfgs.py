# Full-batch L-BFGS with a closure (strong Wolfe line search) fitting a small MLP to a 1-D curve.
import torch
import torch.nn as nn

torch.manual_seed(0)
x = torch.linspace(-2, 2, 200)[:, None]
y = torch.sin(3 * x) * torch.exp(-x**2)
net = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=20, history_size=10, line_search_fn="strong_wolfe")
losses = []


def closure():
    opt.zero_grad()
    loss = nn.functional.mse_loss(net(x), y)
    loss.backward()
    return loss


for it in range(15):
    loss = opt.step(closure)
    losses.append(loss.item())
print("loss first/last", losses[0], losses[-1])

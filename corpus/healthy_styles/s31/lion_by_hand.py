# Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") as a torch.optim
# Optimizer subclass: update = sign(beta1 * m + (1 - beta1) * g), decoupled weight decay, then
# m = beta2 * m + (1 - beta2) * g; lr 10x smaller than Adam's, a linear warmup via LambdaLR.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)
        return loss


W1, W2 = torch.randn(20, 32), torch.randn(32, 5)


def data(n):
    x = torch.randn(n, 20)
    return x, (torch.tanh(x @ W1) @ W2).argmax(1)


model = nn.Sequential(
    nn.Linear(20, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 5)
)
opt = Lion(model.parameters(), lr=3e-4, weight_decay=0.1)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
for step in range(400):
    x, y = data(128)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    if step == 0:
        first = loss.item()
with torch.no_grad():
    x, y = data(2000)
    acc = (model(x).argmax(1) == y).float().mean().item()
print("loss first/last", first, loss.item(), "test acc", acc)

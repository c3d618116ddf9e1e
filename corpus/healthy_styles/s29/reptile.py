# Reptile (Nichol et al. 2018) on sine-wave regression: per task, a deepcopy of the meta-model
# trained by SGD for k steps, then the meta-weights moved toward it by hand.
import copy
import math
import torch
import torch.nn as nn

torch.manual_seed(0)
meta = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def task():
    a, ph = torch.rand(()) * 4.9 + 0.1, torch.rand(()) * math.pi
    return lambda x: a * torch.sin(x + ph)


def adapt(model, f, steps, lr=0.02):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.rand(10, 1) * 10 - 5
        loss = ((model(x) - f(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def eval_meta():
    torch.manual_seed(123)
    errs = []
    for _ in range(10):
        f = task()
        m = copy.deepcopy(meta)
        adapt(m, f, 8)
        x = torch.linspace(-5, 5, 50)[:, None]
        with torch.no_grad():
            errs.append(((m(x) - f(x)) ** 2).mean().item())
    return sum(errs) / len(errs)


before = eval_meta()
torch.manual_seed(0)
for it in range(300):
    f = task()
    fast = copy.deepcopy(meta)
    adapt(fast, f, 5)
    eps = 0.1 * (1 - it / 300)
    with torch.no_grad():
        for p, q in zip(meta.parameters(), fast.parameters()):
            p += eps * (q - p)
print("post-adaptation mse before/after meta-training", before, eval_meta())

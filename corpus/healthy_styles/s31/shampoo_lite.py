# Shampoo (Gupta et al. 2018), a small version as a torch.optim Optimizer: for each matrix
# parameter, left and right statistics L += G G^T, R += G^T G, the update L^{-1/4} G R^{-1/4}
# with the inverse roots recomputed by eigh every 10 steps (grafted to the gradient's norm);
# vectors (biases) use AdaGrad. Fits a two-layer regression net.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


def inv_root(m, eps=1e-6):
    e, v = torch.linalg.eigh(m + eps * torch.eye(m.shape[0]))
    return v @ torch.diag(e.clamp(min=eps) ** -0.25) @ v.t()


class Shampoo(torch.optim.Optimizer):
    def __init__(self, params, lr=0.1, every=10):
        super().__init__(params, dict(lr=lr, every=every))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, st = p.grad, self.state[p]
                if not st:
                    st["step"] = 0
                    if p.dim() == 2:
                        st["L"], st["R"] = (
                            1e-4 * torch.eye(p.shape[0]),
                            1e-4 * torch.eye(p.shape[1]),
                        )
                    else:
                        st["acc"] = torch.zeros_like(p)
                st["step"] += 1
                if p.dim() == 2:
                    st["L"].add_(g @ g.t())
                    st["R"].add_(g.t() @ g)
                    if st["step"] % group["every"] == 1:
                        st["Li"], st["Ri"] = inv_root(st["L"]), inv_root(st["R"])
                    u = st["Li"] @ g @ st["Ri"]
                    u = u * (g.norm() / u.norm().clamp(min=1e-12))
                else:
                    st["acc"].add_(g * g)
                    u = g / (st["acc"].sqrt() + 1e-8)
                p.add_(u, alpha=-group["lr"])


X = torch.randn(1000, 10)
Y = torch.sin(X[:, :3].sum(1, keepdim=True)) + 0.5 * X[:, 3:4] ** 2
model = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 1))
opt = Shampoo(model.parameters(), lr=0.05)
for step in range(300):
    idx = torch.randint(0, 1000, (64,))
    loss = F.mse_loss(model(X[idx]), Y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 0:
        first = loss.item()
with torch.no_grad():
    full = F.mse_loss(model(X), Y).item()
print("loss first/last", first, loss.item(), "full mse", full, "target var", Y.var().item())

# DINO self-distillation (Caron et al. 2021): a student and an EMA teacher (momentum 0.99,
# requires_grad off), both ending in a weight-normalised last layer whose norm g is frozen;
# the teacher output is centred (a running-mean buffer) and sharpened (temperature 0.04), the
# student's at 0.1; cross-entropy between the views' distributions; as in the official code the
# last layer's gradients are cancelled (p.grad = None) during the first epoch.
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N, K = 2000, 8
protos = torch.randn(K, 32)
lab = torch.randint(0, K, (N,))
X = protos[lab] + 1.5 * torch.randn(N, 32)


def view(x):
    return x * (torch.rand_like(x) > 0.2) + 0.3 * torch.randn_like(x)


class Head(nn.Module):
    def __init__(self, i, out=64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(i, 64), nn.GELU(), nn.Linear(64, 16))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(16, out, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1)
        self.last.parametrizations.weight.original0.requires_grad = False

    def forward(self, x):
        return self.last(F.normalize(self.mlp(x), dim=-1))


student = nn.Sequential(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)), Head(32))
teacher = copy.deepcopy(student)
for p in teacher.parameters():
    p.requires_grad_(False)
center = torch.zeros(1, 64)
opt = torch.optim.AdamW(
    [p for p in student.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.04
)


def dino_loss(s_out, t_out):
    t = F.softmax((t_out - center) / 0.04, -1)
    return -(t * F.log_softmax(s_out / 0.1, -1)).sum(-1).mean()


def knn():
    with torch.no_grad():
        f = F.normalize(student[0](X), dim=-1)
        sim = f @ f.t()
        sim.fill_diagonal_(-2)
        return (lab[sim.argmax(1)] == lab).float().mean().item()


print("1-NN acc before", knn())
steps_per_epoch = N // 100
for epoch in range(5):
    perm = torch.randperm(N)
    for i in range(steps_per_epoch):
        x = X[perm[i * 100 : (i + 1) * 100]]
        v1, v2 = view(x), view(x)
        with torch.no_grad():
            t1, t2 = teacher(v1), teacher(v2)
        s1, s2 = student(v1), student(v2)
        loss = (dino_loss(s1, t2) + dino_loss(s2, t1)) / 2
        opt.zero_grad()
        loss.backward()
        if epoch < 1:
            for p in student[1].last.parameters():
                p.grad = None
        opt.step()
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(0.99).add_(ps.detach(), alpha=0.01)
            center = 0.9 * center + 0.1 * torch.cat([t1, t2]).mean(0, keepdim=True)
    print("epoch", epoch, "loss", round(loss.item(), 4), "1-NN acc", knn())

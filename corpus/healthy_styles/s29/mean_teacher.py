# Mean teacher (Tarvainen & Valpola 2017) semi-supervised: the EMA teacher (BatchNorm, train
# mode as in the official code) runs first, under no_grad, on two noisy views; the student's
# consistency loss to the teacher's mean prediction plus CE on the few labelled samples.
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N = 3000
X = torch.randn(N, 10)
y = ((X[:, 0] > 0).long() + (X[:, 1] > 0.5).long())
labelled = torch.zeros(N, dtype=torch.bool)
labelled[:150] = True
student = nn.Sequential(nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 3))
teacher = copy.deepcopy(student)
for p in teacher.parameters():
    p.detach_()
opt = torch.optim.Adam(student.parameters(), lr=2e-3)
losses = []
for step in range(300):
    i = torch.randint(0, N, (128,))
    x = X[i]
    with torch.no_grad():
        t1 = F.softmax(teacher(x + 0.1 * torch.randn_like(x)), 1)
        t2 = F.softmax(teacher(x + 0.1 * torch.randn_like(x)), 1)
    out = student(x + 0.1 * torch.randn_like(x))
    lab = labelled[i]
    ce = F.cross_entropy(out[lab], y[i][lab]) if lab.any() else out.sum() * 0
    cons = F.mse_loss(F.softmax(out, 1), (t1 + t2) / 2)
    loss = ce + min(1.0, step / 100) * 10 * cons
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        a = min(1 - 1 / (step + 1), 0.99)
        for tp, sp in zip(teacher.parameters(), student.parameters()):
            tp.mul_(a).add_(sp, alpha=1 - a)
    losses.append(loss.item())
teacher.eval()
with torch.no_grad():
    acc = (teacher(X).argmax(1) == y).float().mean().item()
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "teacher acc", acc)

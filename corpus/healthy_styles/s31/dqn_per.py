# Double DQN with proportional prioritized experience replay (Schaul et al. 2016): priorities
# |TD error|^alpha, sampling by torch.multinomial, importance-sampling weights with beta annealed
# to 1, per-sample Huber loss weighted by them, a target network updated softly (Polyak), an
# epsilon-greedy behaviour policy. Environment: a 1-D corridor of 10 cells, reward at the right end.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
NS, NA, CAP = 10, 2, 5000


def onehot(s):
    return F.one_hot(s, NS).float()


def env_step(s, a):
    s2 = (s + (2 * a - 1)).clamp(0, NS - 1)
    done = s2 == NS - 1
    return s2, done.float() - 0.01, done


q = nn.Sequential(nn.Linear(NS, 64), nn.ReLU(), nn.Linear(64, NA))
q_tgt = nn.Sequential(nn.Linear(NS, 64), nn.ReLU(), nn.Linear(64, NA))
q_tgt.load_state_dict(q.state_dict())
opt = torch.optim.Adam(q.parameters(), lr=1e-3)
buf_s, buf_a, buf_r, buf_s2, buf_d = (
    torch.zeros(CAP, dtype=t)
    for t in (torch.long, torch.long, torch.float, torch.long, torch.float)
)
prio = torch.zeros(CAP)
n, ptr, s = 0, 0, torch.tensor(0)
alpha, gamma = 0.6, 0.95
for t in range(1500):
    eps = max(0.05, 1 - t / 800)
    with torch.no_grad():
        a = torch.randint(0, NA, ()) if torch.rand(()) < eps else q(onehot(s)).argmax()
    s2, r, done = env_step(s, a)
    buf_s[ptr], buf_a[ptr], buf_r[ptr], buf_s2[ptr], buf_d[ptr] = s, a, r, s2, done.float()
    prio[ptr] = prio[:n].max() if n else 1.0
    ptr, n = (ptr + 1) % CAP, min(n + 1, CAP)
    s = torch.tensor(0) if done else s2
    if n < 64:
        continue
    p = prio[:n] ** alpha
    p = p / p.sum()
    idx = torch.multinomial(p, 64, replacement=True)
    beta = min(1.0, 0.4 + 0.6 * t / 1500)
    w = (n * p[idx]) ** -beta
    w = w / w.max()
    qsa = q(onehot(buf_s[idx])).gather(1, buf_a[idx, None])[:, 0]
    with torch.no_grad():
        a2 = q(onehot(buf_s2[idx])).argmax(1, keepdim=True)
        target = (
            buf_r[idx] + gamma * (1 - buf_d[idx]) * q_tgt(onehot(buf_s2[idx])).gather(1, a2)[:, 0]
        )
    td = qsa - target
    loss = (w * F.smooth_l1_loss(qsa, target, reduction="none")).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    prio[idx] = td.detach().abs() + 1e-3
    with torch.no_grad():
        for pt, po in zip(q_tgt.parameters(), q.parameters()):
            pt.lerp_(po, 0.01)
with torch.no_grad():
    greedy = q(onehot(torch.arange(NS))).argmax(1)
print("greedy actions (1 = right)", greedy.tolist()[:-1], "last loss", loss.item())

"""Misses from real reports, each written apart from our scenarios in the reporter's style and
run unchanged under the zero-code `traindoctor run` beside healthy twins that must stay silent
(no error, no warning); the argmax case also under `td.watch`.

- The model's own prediction as the target ("loss goes to ~0 but accuracy is 10%": `_,
  predicted = torch.max(outputs, 1); loss = criterion(outputs, predicted)`): measured 0.001
  loss and 8.4% test accuracy over 10 classes. Before: TD502 info only. After: TD511 error,
  every one of the compared targets equals the argmax of the logits, from a first call at a
  loss near ln 10. Twins: the fixed loop (which also reaches ~0 loss with 100% train accuracy
  agreement, so agreement alone is no evidence), FixMatch (thresholded pseudo-labels of a weak
  view, detached), pseudo-label test-time adaptation of a trained model (its own argmax is the
  only loss, but the model is no longer at chance), hard-label distillation from a trained
  teacher. Lee's Pseudo-Label (the same forward's argmax, one term beside a supervised loss)
  is a note. The distillation twin was a TD210 false alarm before this session's change (a
  spike warning at the student's first step with the teacher and student phases 150 steps
  each; an error 'diverges 0.0342 -> 1.19' with a 60-step student phase): TD210 now judges a
  later phase's losses apart.
- Class indices regressed as numbers (`criterion = nn.MSELoss()` on `output[:, 0]` against
  `Y.float()`, the 4-way head read with argmax): 23% accuracy over 4 classes. Before: silent.
  After: TD511 warning naming the 4 outputs of `2` and the 0..3 targets. Twin: a multi-task
  head whose output 0 regresses an object count 0..3 beside a classification loss.
- A BOS prepended to a causal LM's inputs, the BOS position's logits dropped and the loss taken
  against the unshifted sequence (transformers#32944/PR #44642 and macrocosm-os/pretraining#64
  report the same "predict the current token" training): loss 0.001, greedy continuation 0%
  valid. Before: silent (the ids the embedding read, T+1 long, were never compared with the T
  targets). After: TD520 warning through the causal attention. Twin: `logits[:, :-1]`.
- A char LSTM whose (batch, time) targets are flattened after a transpose (`y.t().reshape(-1)`
  beside `out.reshape(-1, V)`; s28 rewritten): the loss holds at 3.04 (fixed: 0.14). Before:
  TD108's labels'-entropy info only. After: TD508 warning, 100% of the targets are the next
  ids read (time, batch). Twins: the fixed loop (test_classic_mistakes_s28's lm_fixed), and
  pytorch/examples' word_language_model
  layout (batchified (T, B) data, a seq-first LSTM, `output.view(-1, V)`).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.cli.conftest import reported_batch, top3

pytestmark = pytest.mark.slow

ARGMAX_TARGET = """import torch, torch.nn as nn, torch.optim as optim
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)
centers = torch.randn(10, 64, generator=gen) * 2
labels_all = torch.randint(0, 10, (2000,), generator=gen)
images = centers[labels_all] + torch.randn(2000, 64, generator=gen)
train_ds = torch.utils.data.TensorDataset(images[:1500], labels_all[:1500])
test_x, test_y = images[1500:], labels_all[1500:]
trainloader = torch.utils.data.DataLoader(train_ds, batch_size=64, shuffle=True)
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 10)
    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
net = Net()
criterion = nn.CrossEntropyLoss()
optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
for epoch in range(2):
    running_loss = 0.0
    for i, data in enumerate(trainloader, 0):
        inputs, labels = data
        optimizer.zero_grad()
        outputs = net(inputs)
        _, predicted = torch.max(outputs, 1)
        loss = criterion(outputs, {target})
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    with torch.no_grad():
        acc = (net(test_x).argmax(1) == test_y).float().mean().item()
    print(f"[{epoch + 1}] loss: {running_loss / len(trainloader):.3f} acc {acc:.3f}")
"""

FIXMATCH = """import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
C = 6
centers = torch.randn(C, 32, generator=g) * 2
yl = torch.randint(0, C, (120,), generator=g); xl = centers[yl] + torch.randn(120, 32, generator=g)
yu = torch.randint(0, C, (3000,), generator=g); xu = centers[yu] + torch.randn(3000, 32, generator=g)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, C))
opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
for step in range(80):
    il = torch.randint(0, 120, (32,)); iu = torch.randint(0, 3000, (96,))
    weak = xu[iu] + 0.1 * torch.randn(96, 32); strong = xu[iu] + 0.8 * torch.randn(96, 32)
    logits = model(torch.cat([xl[il], weak, strong]))
    lx, lw, ls = logits[:32], logits[32:128], logits[128:]
    sup = F.cross_entropy(lx, yl[il])
    maxp, pseudo = torch.softmax(lw.detach(), dim=-1).max(dim=-1)
    mask = (maxp >= 0.95).float()
    loss = sup + (F.cross_entropy(ls, pseudo, reduction="none") * mask).mean()
    opt.zero_grad(); loss.backward(); opt.step()
"""

TTA_PSEUDO = """import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
C = 5
centers = torch.randn(C, 20, generator=g) * 1.5
y = torch.randint(0, C, (2000,), generator=g); x = centers[y] + torch.randn(2000, 20, generator=g)
yt = torch.randint(0, C, (1000,), generator=g)
xt = centers[yt] + 0.6 + 1.3 * torch.randn(1000, 20, generator=g)
net = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, C))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
for epoch in range(2):
    perm = torch.randperm(2000)
    for i in range(0, 2000, 50):
        idx = perm[i:i + 50]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(); loss.backward(); opt.step()
adapt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
for i in range(0, 1000, 50):
    out = net(xt[i:i + 50])
    loss = F.cross_entropy(out, out.argmax(1).detach())
    adapt.zero_grad(); loss.backward(); adapt.step()
"""

LEE_PSEUDO_LABEL = """import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
C = 10
centers = torch.randn(C, 40, generator=g) * 2
yl = torch.randint(0, C, (200,), generator=g); xl = centers[yl] + torch.randn(200, 40, generator=g)
yu = torch.randint(0, C, (4000,), generator=g); xu = centers[yu] + torch.randn(4000, 40, generator=g)
net = nn.Sequential(nn.Linear(40, 100), nn.Sigmoid(), nn.Linear(100, C))
opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
for t in range(80):
    il = torch.randint(0, 200, (32,)); iu = torch.randint(0, 4000, (128,))
    alpha = min(3.0, 0.1 + 3.0 * t / 100)
    out_u = net(xu[iu])
    loss = F.cross_entropy(net(xl[il]), yl[il]) + alpha * F.cross_entropy(out_u, out_u.argmax(1))
    opt.zero_grad(); loss.backward(); opt.step()
"""

DISTILL_HARD = """import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
C = 8
centers = torch.randn(C, 24, generator=g) * 2
y = torch.randint(0, C, (3000,), generator=g); x = centers[y] + torch.randn(3000, 24, generator=g)
teacher = nn.Sequential(nn.Linear(24, 128), nn.ReLU(), nn.Linear(128, C))
topt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
for i in range(100):
    idx = torch.randint(0, 3000, (64,))
    l = F.cross_entropy(teacher(x[idx]), y[idx]); topt.zero_grad(); l.backward(); topt.step()
teacher.eval()
student = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, C))
opt = torch.optim.Adam(student.parameters(), lr=1e-3)
for i in range(60):
    idx = torch.randint(0, 3000, (64,))
    with torch.no_grad():
        hard = teacher(x[idx]).argmax(1)
    loss = F.cross_entropy(student(x[idx]), hard)
    opt.zero_grad(); loss.backward(); opt.step()
"""

MSE_CLASS = """import torch, torch.nn as nn
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
X = torch.randn(2000, 30, generator=g); W = torch.randn(30, 4, generator=g)
Y = (X @ W).argmax(1)
model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 4))
criterion = nn.MSELoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(2):
    perm = torch.randperm(1600)
    for i in range(0, 1600, 32):
        idx = perm[i:i + 32]
        output = model(X[idx])
        loss = criterion(output[:, 0], Y[idx].float())
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    with torch.no_grad():
        acc = (model(X[1600:]).argmax(1) == Y[1600:]).float().mean()
    print(epoch, loss.item(), acc.item())
"""

MULTITASK_COUNT = """import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
X = torch.randn(2000, 30, generator=g); W = torch.randn(30, 3, generator=g)
scene = (X @ W).argmax(1); count = (X[:, :3] > 0.3).sum(1)
model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(2):
    perm = torch.randperm(2000)
    for i in range(0, 2000, 32):
        idx = perm[i:i + 32]
        out = model(X[idx])
        loss = F.mse_loss(out[:, 0], count[idx].float()) + F.cross_entropy(out[:, 1:], scene[idx])
        opt.zero_grad(); loss.backward(); opt.step()
"""

BOS_LM = """import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
V, T, BOS = 20, 16, 0
def batch(n):
    a = torch.randint(1, V, (n, 1))
    steps = torch.randint(1, 3, (n, T - 1))
    return torch.cat([a, a + steps.cumsum(1)], 1) % (V - 1) + 1
class GPT(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.tok = nn.Embedding(V, d); self.pos = nn.Embedding(T + 1, d)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 1)
        self.head = nn.Linear(d, V)
    def forward(self, idx):
        L = idx.size(1)
        h = self.tok(idx) + self.pos(torch.arange(L))
        mask = nn.Transformer.generate_square_subsequent_mask(L)
        return self.head(self.blocks(h, mask=mask, is_causal=True))
model = GPT()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
for it in range(40):
    seq = batch(32)
    inp = torch.cat([torch.full((32, 1), BOS), seq], 1)
    logits = model(inp)
    logits = logits[{cut}]
    loss = F.cross_entropy(logits.reshape(-1, V), seq.reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step()
"""

CHAR_LSTM = """import torch, torch.nn as nn
torch.manual_seed(0)
text = ("the quick brown fox jumps over the lazy dog. " * 100)
chars = sorted(set(text)); V = len(chars)
data = torch.tensor([chars.index(c) for c in text])
B, T = 16, 32
n = (len(data) - 1) // (B * T) * (B * T)
xs = data[:n].view(B, -1); ys = data[1:n + 1].view(B, -1)
class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 32); self.rnn = nn.LSTM(32, 64, batch_first=True)
        self.out = nn.Linear(64, V)
    def forward(self, x, h=None):
        o, h = self.rnn(self.emb(x), h)
        return self.out(o), h
model = LM()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
crit = nn.CrossEntropyLoss()
for epoch in range(3):
    h = None
    for i in range(0, xs.size(1) - T + 1, T):
        x, y = xs[:, i:i + T], ys[:, i:i + T]
        if h is not None:
            h = tuple(t.detach() for t in h)
        out, h = model(x, h)
        opt.zero_grad()
        loss = crit(out.reshape(-1, V), {flat})
        loss.backward()
        opt.step()
"""

# pytorch/examples word_language_model: batchified (T, B) data, a seq-first LSTM
SEQ_FIRST_LM = """import torch, torch.nn as nn
torch.manual_seed(0)
text = ("the quick brown fox jumps over the lazy dog. " * 100)
chars = sorted(set(text)); V = len(chars)
data = torch.tensor([chars.index(c) for c in text])
def batchify(d, bsz):
    nb = d.size(0) // bsz
    return d[:nb * bsz].view(bsz, -1).t().contiguous()
train = batchify(data, 20); bptt = 35
class RNNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Embedding(V, 32); self.rnn = nn.LSTM(32, 64)
        self.decoder = nn.Linear(64, V)
    def forward(self, x, h):
        o, h = self.rnn(self.encoder(x), h)
        return self.decoder(o).view(-1, V), h
model = RNNModel(); crit = nn.CrossEntropyLoss()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(3):
    h = None
    for i in range(0, train.size(0) - 1, bptt):
        L = min(bptt, len(train) - 1 - i)
        x, y = train[i:i + L], train[i + 1:i + 1 + L].reshape(-1)
        if h is not None:
            h = tuple(t.detach() for t in h)
        out, h = model(x, h)
        loss = crit(out, y)
        opt.zero_grad(); loss.backward(); opt.step()
"""

BUGGY = {
    "argmax_target": ARGMAX_TARGET.replace("{target}", "predicted"),
    "mse_class_ids": MSE_CLASS,
    "bos_unshifted": BOS_LM.replace("{cut}", ":, 1:"),
    "lm_targets_flattened_transposed": CHAR_LSTM.replace("{flat}", "y.t().reshape(-1)"),
}
HEALTHY = {
    "argmax_fixed": ARGMAX_TARGET.replace("{target}", "labels"),
    "fixmatch": FIXMATCH,
    "tta_pseudo_labels": TTA_PSEUDO,
    "lee_pseudo_label": LEE_PSEUDO_LABEL,
    "distill_hard_labels": DISTILL_HARD,
    "multitask_count": MULTITASK_COUNT,
    "bos_shifted": BOS_LM.replace("{cut}", ":, :-1"),
    "seq_first_lm": SEQ_FIRST_LM,
}
runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_own_argmax_as_the_target(runs):
    f = top3(runs["argmax_target"], "TD511")
    assert f["severity"] == "error"
    assert "own predictions" in f["title"]
    assert f["evidence"]["share_equal_to_own_argmax"] == 1.0
    assert f["evidence"]["whole_objective"] is True


def test_same_forward_pseudo_labels_beside_a_supervised_loss_are_a_note(runs):
    f = runs["lee_pseudo_label"].finding("TD511")
    assert f["severity"] == "info"
    assert "one term of the objective" in f["cause"]


def test_class_indices_regressed_on_one_output(runs):
    f = top3(runs["mse_class_ids"], "TD511")
    assert f["severity"] == "warning"
    assert "output 0 of the 4 outputs" in f["title"] and "0..3" in f["title"]


def test_bos_prepended_targets_not_shifted(runs):
    f = top3(runs["bos_unshifted"], "TD520")
    assert f["severity"] == "warning"
    assert f["evidence"]["ids_offset"] == 1
    assert "a token prepended" in f["cause"]


def test_targets_flattened_in_the_other_order(runs):
    f = top3(runs["lm_targets_flattened_transposed"], "TD508")
    assert f["severity"] == "warning"
    assert "laid out (time, batch)" in f["title"]
    assert f["evidence"]["share_next_ids_read_time_major"] == 1.0


def test_own_argmax_under_watch(tmp_path):
    import traindoctor as td

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(512, 16)
    with td.watch(model, opt, out_dir=str(tmp_path)) as doc:
        for _ in range(20):
            idx = torch.randint(0, 512, (64,))
            out = model(x[idx])
            loss = F.cross_entropy(out, out.argmax(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    f = [f for f in doc.report.findings if f.code == "TD511"]
    assert f and f[0].severity.value == "error", [(f.code, f.title) for f in doc.report.findings]
    assert not [c for c in loud_codes(doc.report) if c != "TD511"]


def loud_codes(report) -> list[str]:
    return [f.code for f in report.findings if f.severity.value in ("error", "warning")]


def test_contrastive_positives_are_not_labels(tmp_path):
    # A random encoder already ranks the positive first under weak augmentation: SimCLR's
    # arange-like labels and MoCo's all-0 labels over cat([l_pos, l_neg]) (a 48-key queue, so
    # its labels are counted) match the argmax from step 1 and are no fault.
    import traindoctor as td

    torch.manual_seed(0)
    x_all = torch.randn(2000, 32)
    enc = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    queue = F.normalize(torch.randn(48, 16), dim=1)
    with td.watch(enc, opt, out_dir=str(tmp_path)) as doc:
        for step in range(40):
            x = x_all[torch.randint(0, 2000, (64,))]
            a, b = x + 0.05 * torch.randn_like(x), x + 0.05 * torch.randn_like(x)
            if step % 2:
                z = F.normalize(enc(torch.cat([a, b])), dim=1)
                sim = (z @ z.t() / 0.5).fill_diagonal_(-1e9)
                labels = torch.cat([torch.arange(64, 128), torch.arange(0, 64)])
                loss = F.cross_entropy(sim, labels)
            else:
                q = F.normalize(enc(a), dim=1)
                with torch.no_grad():
                    k = F.normalize(enc(b), dim=1)
                logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / 0.07
                loss = F.cross_entropy(logits, torch.zeros(64, dtype=torch.long))
                queue = torch.cat([k, queue])[:48]
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert "TD511" not in [f.code for f in doc.report.findings]

"""Training loops that update the weights by hand, without torch.optim, written the way the
classic programs and tutorials write them, run unchanged under the zero-code `traindoctor run`.

Styles: pytorch/examples regression (`fc.zero_grad(); ...; param.data.add_(-0.1 *
param.grad)`), pytorch/examples word_language_model (`model.zero_grad()`, clip_grad_norm_,
`p.data.add_(p.grad, alpha=-lr)`), d2l.ai's `sgd(params, lr, batch_size)` on raw tensors
(`param -= lr * param.grad / batch_size; param.grad.zero_()` under no_grad), the old PyTorch
tutorial (`w1.data -= learning_rate * w1.grad.data; w1.grad.data.zero_()`), makemore's MLP
(`for p in parameters: p.grad = None` ... `p.data += -lr * p.grad`) and nn.Parameter made by
hand (`p.sub_(lr * p.grad)`).

Healthy ones: no TD105 ("optimizer.step() was never called", false before: each update is a
step now), no TD106, one step per update, `--max-steps N` ends the run after N updates. The
same programs without their gradient zeroing get TD106 at the line that writes the weights
(a `p.data` write) or at backward(). A loop that never updates still gets TD105; an EMA copy
refreshed in place (no gradient) is not a step; an optimizer loop that also clamps its
weights in place (WGAN) is not counted twice.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traindoctor as td
from tests.cli.conftest import line_of, run_all, write
from tests.cli.conftest import td as traindoctor
from traindoctor.doctor import Doctor
from traindoctor.integrations.autopatch import attached

REGRESSION = """
# pytorch/examples regression/main.py
import torch
import torch.nn.functional as F

POLY_DEGREE = 4
torch.manual_seed(42)
W_target = torch.randn(POLY_DEGREE, 1) * 5
b_target = torch.randn(1) * 5


def make_features(x):
    x = x.unsqueeze(1)
    return torch.cat([x ** i for i in range(1, POLY_DEGREE + 1)], 1)


def get_batch(batch_size=32):
    x = make_features(torch.randn(batch_size))
    return x, x.mm(W_target) + b_target.item()


fc = torch.nn.Linear(W_target.size(0), 1)
updates = 0
try:
    for batch_idx in range(1, 61):
        batch_x, batch_y = get_batch()
        fc.zero_grad()
        output = F.smooth_l1_loss(fc(batch_x), batch_y)
        loss = output.item()
        output.backward()
        for param in fc.parameters():
            param.data.add_(-0.1 * param.grad)  # update
        updates += 1
        if loss < 1e-3:
            break
finally:
    with open("updates.txt", "w") as fh:
        fh.write(str(updates))
print("Loss: {:.6f} after {} batches".format(loss, batch_idx))
"""

WORD_LM = """
# pytorch/examples word_language_model/main.py, shrunk
import torch
import torch.nn as nn


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp, nhid, nlayers):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid, self.nlayers = nhid, nlayers

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.encoder(input), hidden)
        decoded = self.decoder(output).view(-1, self.decoder.out_features)
        return torch.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                weight.new_zeros(self.nlayers, bsz, self.nhid))


def repackage_hidden(h):
    return tuple(v.detach() for v in h)


torch.manual_seed(1111)
ntokens, bptt, lr = 40, 10, 2.0
start = torch.randint(0, ntokens, (1, 6))
train_data = (start + torch.arange(401).unsqueeze(1)) % ntokens  # learnable: next = +1
model = RNNModel(ntokens, 16, 32, 2)
criterion = nn.NLLLoss()
for epoch in range(2):
    model.train()
    hidden = model.init_hidden(6)
    for batch, i in enumerate(range(0, train_data.size(0) - 1, bptt)):
        data, targets = train_data[i:i + bptt], train_data[i + 1:i + 1 + bptt].reshape(-1)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)  # update
    print(epoch, loss.item())
"""

D2L = """
# d2l.ai linear regression from scratch
import torch


def synthetic_data(w, b, num_examples):
    X = torch.normal(0, 1, (num_examples, len(w)))
    y = torch.matmul(X, w) + b
    y += torch.normal(0, 0.01, y.shape)
    return X, y.reshape((-1, 1))


def linreg(X, w, b):
    return torch.matmul(X, w) + b


def squared_loss(y_hat, y):
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


def sgd(params, lr, batch_size):
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()  # zero


torch.manual_seed(0)
true_w, true_b = torch.tensor([2, -3.4]), 4.2
features, labels = synthetic_data(true_w, true_b, 400)
w = torch.normal(0, 0.01, size=(2, 1), requires_grad=True)
b = torch.zeros(1, requires_grad=True)
lr, num_epochs, batch_size = 0.03, 3, 10
for epoch in range(num_epochs):
    for i in range(0, 400, batch_size):
        X, y = features[i:i + batch_size], labels[i:i + batch_size]
        l = squared_loss(linreg(X, w, b), y)
        l.sum().backward()
        sgd([w, b], lr, batch_size)
    with torch.no_grad():
        print(f"epoch {epoch + 1}, loss {float(squared_loss(linreg(features, w, b), labels).mean()):f}")
"""

OLD_TUTORIAL = """
# PyTorch tutorial (0.3 era): two_layer_net_autograd.py
import torch
from torch.autograd import Variable

dtype = torch.FloatTensor
N, D_in, H, D_out = 64, 100, 50, 10
torch.manual_seed(0)
x = Variable(torch.randn(N, D_in).type(dtype), requires_grad=False)
y = Variable(torch.randn(N, D_out).type(dtype), requires_grad=False)
w1 = Variable(torch.randn(D_in, H).type(dtype), requires_grad=True)
w2 = Variable(torch.randn(H, D_out).type(dtype), requires_grad=True)
learning_rate = 1e-6
for t in range(80):
    y_pred = x.mm(w1).clamp(min=0).mm(w2)
    loss = (y_pred - y).pow(2).sum()
    loss.backward()
    w1.data -= learning_rate * w1.grad.data  # update
    w2.data -= learning_rate * w2.grad.data
    w1.grad.data.zero_()  # zero
    w2.grad.data.zero_()  # zero
print(loss.item())
"""

MAKEMORE_MLP = """
# makemore (Karpathy, parts 2-3): character MLP with a parameters list
import torch
import torch.nn.functional as F

g = torch.Generator().manual_seed(2147483647)
X = torch.randint(0, 27, (512, 3), generator=g)
Y = (X.sum(1) % 27)
C = torch.randn((27, 10), generator=g)
W1 = torch.randn((30, 64), generator=g)
b1 = torch.randn(64, generator=g)
W2 = torch.randn((64, 27), generator=g) * 0.01  # part 3: small logits at init
b2 = torch.randn(27, generator=g) * 0
parameters = [C, W1, b1, W2, b2]
for p in parameters:
    p.requires_grad = True
for i in range(90):
    ix = torch.randint(0, X.shape[0], (32,))
    emb = C[X[ix]]
    h = torch.tanh(emb.view(-1, 30) @ W1 + b1)
    logits = h @ W2 + b2
    loss = F.cross_entropy(logits, Y[ix])
    for p in parameters:
        p.grad = None  # zero
    loss.backward()
    lr = 0.1 if i < 60 else 0.01
    for p in parameters:
        p.data += -lr * p.grad  # update
print(loss.item())
"""

HAND_PARAMETERS = """
# nn.Parameter made by hand, no nn.Module, updated in place under no_grad
import torch
from torch import nn

torch.manual_seed(0)
X = torch.randn(400, 3)
Y = X @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3
weight = nn.Parameter(torch.zeros(3, 1))
bias = nn.Parameter(torch.zeros(1))
lr = 0.05
for epoch in range(3):
    for i in range(0, 400, 20):
        pred = X[i:i + 20] @ weight + bias
        loss = nn.functional.mse_loss(pred, Y[i:i + 20])
        loss.backward()
        with torch.no_grad():
            for p in (weight, bias):
                p.sub_(lr * p.grad)
                p.grad = None  # zero
print(loss.item())
"""

WITH_EMA = """
# hand-written SGD plus an EMA copy refreshed in place every update (no gradient: not a step)
import copy
import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
ema = copy.deepcopy(model)
X = torch.randn(512, 8)
Y = X[:, :1] * 2 - X[:, 1:2]
for step in range(50):
    idx = torch.randint(0, 512, (32,))
    model.zero_grad()
    loss = ((model(X[idx]) - Y[idx]) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.mul_(0.99).add_(p, alpha=0.01)
    if step % 10 == 0:
        with torch.no_grad():
            print(step, ((ema(X) - Y) ** 2).mean().item())
"""

NEVER_UPDATED = """
# the update was meant to start after a warm-up longer than the run: nothing trains
import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
X = torch.randn(512, 8)
Y = X[:, :1] * 2
for step in range(40):
    idx = torch.randint(0, 512, (32,))
    model.zero_grad()
    loss = ((model(X[idx]) - Y[idx]) ** 2).mean()
    loss.backward()
    if step > 1000:
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-0.05)
"""

CLAMPED = """
# WGAN-style critic: optimizer.step() then the weights clamped in place (one step, not two)
import torch
import torch.nn as nn

torch.manual_seed(0)
critic = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.RMSprop(critic.parameters(), lr=5e-4)
real = torch.randn(1024, 2) * 0.5 + 2
fake = torch.randn(1024, 2)
for it in range(30):
    opt.zero_grad()
    idx = torch.randint(0, 1024, (64,))
    loss = -(critic(real[idx]).mean() - critic(fake[idx]).mean())
    loss.backward()
    opt.step()
    for p in critic.parameters():
        p.data.clamp_(-0.01, 0.01)
"""


def _without(text: str, marker: str) -> str:
    """The program with every line holding `marker` (its gradient zeroing) made a `pass`."""
    return "\n".join(
        line[: len(line) - len(line.lstrip())] + "pass" if marker in line else line
        for line in text.splitlines()
    )


# name -> (script, expected number of updates)
HEALTHY = {
    "regression": (REGRESSION, 60),
    "word_lm": (WORD_LM, 80),
    "d2l": (D2L, 120),
    "old_tutorial": (OLD_TUTORIAL, 80),
    "makemore": (MAKEMORE_MLP, 90),
    "hand_parameters": (HAND_PARAMETERS, 60),
    "with_ema": (WITH_EMA, 50),
    "clamped": (CLAMPED, 30),
}
# name -> (script, the marker of the line TD106 must point at, expected params)
NO_ZERO_GRAD = {
    "regression_nozero": (
        _without(REGRESSION, "fc.zero_grad()"),
        "# update",
        {"weight", "bias"},
    ),
    "d2l_nozero": (_without(D2L, "# zero"), ".backward()", {"w", "b"}),
    "old_tutorial_nozero": (_without(OLD_TUTORIAL, "# zero"), "# update", {"w1", "w2"}),
    "makemore_nozero": (
        _without(MAKEMORE_MLP, "# zero"),
        "# update",
        {"C", "W1", "b1", "W2", "b2"},
    ),
    "hand_parameters_nozero": (
        _without(HAND_PARAMETERS, "# zero"),
        ".backward()",
        {"weight", "bias"},
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    jobs = {}
    scripts = {n: s for n, (s, _) in HEALTHY.items()}
    scripts.update({n: s for n, (s, _, _) in NO_ZERO_GRAD.items()})
    scripts["never_updated"] = NEVER_UPDATED
    for name, text in scripts.items():
        folder = tmp_path_factory.mktemp(name)
        write(folder, "train.py", text)
        jobs[name] = lambda folder=folder: traindoctor(folder, "run", "train.py")
    for n in (3, 7):
        folder = tmp_path_factory.mktemp(f"max_steps_{n}")
        write(folder, "train.py", REGRESSION)
        jobs[f"max_steps_{n}"] = lambda folder=folder, n=n: traindoctor(
            folder, "run", "--max-steps", str(n), "train.py"
        )
    return run_all(jobs)


def _loud(result) -> list[str]:
    return [f["code"] for f in result.findings()["findings"] if f["severity"] != "info"]


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_handwritten_loop_is_silent_and_counts_one_step_per_update(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    loud = _loud(r)
    assert "TD105" not in loud and "TD106" not in loud, r
    assert not loud, f"{name}: {loud}\n{r}"
    assert r.findings()["steps"] == HEALTHY[name][1], r


@pytest.mark.parametrize("name", sorted(NO_ZERO_GRAD))
def test_missing_zero_grad_in_handwritten_loop_is_td106_at_its_line(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    assert "TD105" not in r.codes(), r
    f = r.finding("TD106")
    assert f["severity"] == "error"
    script, marker, params = NO_ZERO_GRAD[name]
    line = line_of(r.cwd / "train.py", marker)
    assert f["where"]["source"] == f"train.py:{line}", f
    if params is not None:
        assert set(f["where"]["params"]) == params, f


def test_loop_that_never_updates_still_gets_td105(runs):
    r = runs["never_updated"]
    f = r.finding("TD105")
    assert f["severity"] == "error"
    assert "never updated" in f["title"], f
    assert r.findings()["steps"] == 0


@pytest.mark.parametrize("n", [3, 7])
def test_max_steps_ends_a_handwritten_loop_after_n_updates(runs, n):
    r = runs[f"max_steps_{n}"]
    assert r.rc == 0, r
    report = r.findings()
    assert report["steps"] == n, r
    assert report["run"]["ended"] == "max_steps", report["run"]
    # The script itself made exactly n updates before it was stopped.
    assert (r.cwd / "updates.txt").read_text() == str(n)


# -- in process: td.watch without an optimizer, bit identity ---------------------------------
def _hand_loop(model, steps, zero, lr=0.05, doc=None):
    torch.manual_seed(1)
    x, y = torch.randn(256, 6), torch.randn(256, 1)
    for i in range(steps):
        idx = torch.arange(i * 16, i * 16 + 16) % 256
        if zero:
            model.zero_grad()
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        if doc is not None:
            doc.log(loss=loss)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


@pytest.mark.parametrize("optimizer", ["left out", "None"])
def test_watch_without_an_optimizer_counts_handwritten_updates(tmp_path, optimizer):
    model = _model()
    args = (model,) if optimizer == "left out" else (model, None)
    doc = td.watch(*args, out_dir=tmp_path, console=False)
    _hand_loop(model, 30, zero=True, doc=doc)
    report = doc.close()
    assert report.steps == 30
    assert not [f for f in report.findings if f.severity.value != "info"], report.findings
    # The update was measured around the hand-written write (TD104/TD108's input).
    updates = doc.timeline.series("params.update")
    assert updates and all(v > 0 for _, u in updates for v in u.values())


def test_watch_without_an_optimizer_finds_missing_zero_grad(tmp_path):
    model = _model()
    doc = td.watch(model, out_dir=tmp_path, console=False)
    _hand_loop(model, 30, zero=False, doc=doc)
    report = doc.close()
    f = report.get("TD106")
    assert f is not None and f.where.source and f.where.source.endswith(f":{_update_line()}"), (
        report.findings
    )
    assert report.get("TD105") is None


def _update_line() -> int:
    import inspect

    lines, start = inspect.getsourcelines(_hand_loop)
    return start + next(i for i, t in enumerate(lines) if "p.data.add_" in t)


def test_handwritten_loop_params_are_bit_identical_with_traindoctor(tmp_path):
    plain = _model()
    _hand_loop(plain, 25, zero=True)
    watched = _model()
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        _hand_loop(watched, 25, zero=True)
    report = doctor.close()
    assert report.steps == 25
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a, b)
    # Everything put in place is taken off again: torch's own `.data` descriptor is back.
    assert "data" not in torch.Tensor.__dict__


def test_handwritten_update_that_stops_after_the_first_batches_is_td105(tmp_path):
    model = _model()
    doc = td.watch(model, out_dir=tmp_path, console=False)
    torch.manual_seed(1)
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    for step in range(40):
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if step < 3:  # a debug block that updates the first batches only
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-0.05)
    report = doc.close()
    assert report.steps == 3
    f = report.get("TD105")
    assert f is not None and f.severity.value == "error"
    assert "updated by hand 3 time(s)" in f.title, f.title

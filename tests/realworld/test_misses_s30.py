"""Misses from real reports (batch 5), each written in the reporter's style and run unchanged
under the zero-code `traindoctor run` beside its fixed twin, which must stay silent (no error,
no warning); the same fault also under `td.watch`.

- pytorch/pytorch#715 (https://github.com/pytorch/pytorch/issues/715), also #666, #38639 and
  kanezaki/pytorch-unsupervised-segmentation#6: hidden layers appended to a plain Python list
  (`self.hids = []`), so `model.parameters()` skips them and `Adam(model.parameters())` never
  updates them; they still run in the forward and get gradients. Measured (5 epochs): loss
  0.81 and accuracy 0.92, against 0.065 and 0.97 with `nn.ModuleList`. Before: TD502 info
  only. After: TD103 warning naming hids[0..2].weight/bias, held in a plain list, with a
  gradient at every sampled step and unchanged values.
- automan000/Convolutional_LSTM_PyTorch#17
  (https://github.com/automan000/Convolutional_LSTM_PyTorch/issues/17): the peephole weights
  Wci/Wcf/Wco made as `torch.zeros(..., requires_grad=True)` instead of `nn.Parameter` ("if
  you declare an optimizer like Adam(model.parameters()), parameters will not be updated
  forever"). Before: silent. After: TD103 warning naming cell.Wci, cell.Wcf, cell.Wco.

The fixed twins (nn.ModuleList, nn.Parameter) are silent. Under `td.watch` an input cached on
the model with requires_grad (replaced every step) is not reported.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.nn as nn

from tests.cli.conftest import fixed_twin, reported_batch, top3

pytestmark = pytest.mark.slow

LIST_LAYERS = """import torch, torch.nn as nn, torch.optim as optim
torch.manual_seed(0)
options = {'n_layers': 3, 'n_hid': 64, 'act': 'ReLU'}
X = torch.randn(3000, 20); W = torch.randn(20, 3)
Y = (torch.tanh(X @ W) * 2).argmax(1)
class SNLINet(nn.Module):
    def __init__(self, options):
        super(SNLINet, self).__init__()
        self.inp = nn.Linear(20, options['n_hid'])
        self.hids = []
        for li in range(options['n_layers']):
            self.hids.append(nn.Linear(options['n_hid'], options['n_hid']))
        self.classifier = nn.Linear(options['n_hid'], 3)
    def forward(self, x):
        h = torch.relu(self.inp(x))
        for layer in self.hids:
            h = torch.relu(layer(h))
        return self.classifier(h)
model = SNLINet(options)
opt = optim.Adam(model.parameters(), lr=1e-3)
crit = nn.CrossEntropyLoss()
for epoch in range(2):
    perm = torch.randperm(3000)
    for i in range(0, 3000, 64):
        idx = perm[i:i+64]
        opt.zero_grad()
        loss = crit(model(X[idx]), Y[idx])
        loss.backward()
        opt.step()
    print(epoch, loss.item())
"""

PEEPHOLE = """import torch, torch.nn as nn
torch.manual_seed(0)
class PeepholeCell(nn.Module):
    def __init__(self, input_size, hidden_size):
        super(PeepholeCell, self).__init__()
        self.Wxi = nn.Linear(input_size, hidden_size)
        self.Whi = nn.Linear(hidden_size, hidden_size, bias=False)
        self.Wxf = nn.Linear(input_size, hidden_size)
        self.Whf = nn.Linear(hidden_size, hidden_size, bias=False)
        self.Wxc = nn.Linear(input_size, hidden_size)
        self.Whc = nn.Linear(hidden_size, hidden_size, bias=False)
        self.Wxo = nn.Linear(input_size, hidden_size)
        self.Who = nn.Linear(hidden_size, hidden_size, bias=False)
        self.Wci = torch.zeros(1, hidden_size, requires_grad=True)
        self.Wcf = torch.zeros(1, hidden_size, requires_grad=True)
        self.Wco = torch.zeros(1, hidden_size, requires_grad=True)
    def forward(self, x, h, c):
        ci = torch.sigmoid(self.Wxi(x) + self.Whi(h) + c * self.Wci)
        cf = torch.sigmoid(self.Wxf(x) + self.Whf(h) + c * self.Wcf)
        cc = cf * c + ci * torch.tanh(self.Wxc(x) + self.Whc(h))
        co = torch.sigmoid(self.Wxo(x) + self.Who(h) + cc * self.Wco)
        return co * torch.tanh(cc), cc
class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = PeepholeCell(4, 32)
        self.head = nn.Linear(32, 1)
    def forward(self, seq):
        h = torch.zeros(seq.size(0), 32); c = torch.zeros(seq.size(0), 32)
        for t in range(seq.size(1)):
            h, c = self.cell(seq[:, t], h, c)
        return self.head(h)
model = Model()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.MSELoss()
data = torch.randn(1024, 8, 4); target = data[:, :, 0].sum(1, keepdim=True) * 0.3
for epoch in range(4):
    for i in range(0, 1024, 64):
        out = model(data[i:i+64])
        loss = loss_fn(out, target[i:i+64])
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    print(epoch, loss.item())
"""

BUGGY = {"list_layers": LIST_LAYERS, "peephole_tensors": PEEPHOLE}
HEALTHY = {
    "module_list": fixed_twin(LIST_LAYERS, [("self.hids = []", "self.hids = nn.ModuleList()")]),
    "peephole_params": fixed_twin(
        PEEPHOLE,
        [
            (
                f"self.{w} = torch.zeros(1, hidden_size, requires_grad=True)",
                f"self.{w} = nn.Parameter(torch.zeros(1, hidden_size))",
            )
            for w in ("Wci", "Wcf", "Wco")
        ],
    ),
}
runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_layers_in_a_plain_list(runs):
    f = top3(runs["list_layers"], "TD103")
    assert f["severity"] == "warning"
    assert f["evidence"]["hidden_tensors"] == [
        f"hids[{i}].{p}" for i in range(3) for p in ("bias", "weight")
    ]
    assert "plain Python list" in f["cause"]


def test_plain_tensor_attributes(runs):
    f = top3(runs["peephole_tensors"], "TD103")
    assert f["severity"] == "warning"
    assert f["evidence"]["hidden_tensors"] == ["cell.Wcf", "cell.Wci", "cell.Wco"]
    assert "not nn.Parameter" in f["cause"]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.blocks = [nn.Linear(32, 32) for _ in range(2)]
        self.temp = torch.ones(1, requires_grad=True)
        self.out = nn.Linear(32, 4)
        self.saliency: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.requires_grad_(True)
        self.saliency = x  # a cached input with requires_grad: not a param
        h = torch.relu(self.inp(x))
        for b in self.blocks:
            h = torch.relu(b(h))
        return self.out(h) / self.temp


@pytest.mark.parametrize("fixed", [False, True])
def test_hidden_tensors_under_watch(fixed):
    import traindoctor as td

    torch.manual_seed(0)
    model = _Net()
    if fixed:
        model.blocks = nn.ModuleList(model.blocks)
        model.temp = nn.Parameter(model.temp.detach())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = torch.randn(512, 16)
    y_all = x_all[:, :4].argmax(1)
    with td.watch(model, opt, out_dir=tempfile.mkdtemp()) as doc:
        for _ in range(60):
            idx = torch.randint(0, 512, (32,))
            loss = nn.functional.cross_entropy(model(x_all[idx].clone()), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    found = [f for f in doc.report.findings if f.code == "TD103"]
    if fixed:
        assert not found
        return
    assert found and found[0].severity.value == "warning"
    names = found[0].evidence["hidden_tensors"]
    assert names == [
        "blocks[0].bias",
        "blocks[0].weight",
        "blocks[1].bias",
        "blocks[1].weight",
        "temp",
    ]

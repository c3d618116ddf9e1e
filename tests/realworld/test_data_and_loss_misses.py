"""Real bugs traindoctor used to miss, each as a standalone training script written the way a
user writes one (pytorch/examples, forum posts, tutorials), run unchanged under the zero-code
`traindoctor run`, beside a healthy twin that must stay silent.

- TD506: softmax (not log_softmax) fed to `F.nll_loss` / `nn.NLLLoss`.
- TD504: one batch reused every step while a larger source exists (`next(iter(loader))`
  before the loop, a constant slice `X[:64]` of a 10,000-row tensor); full-batch training
  and a small training split sliced off a tensor with its rest validated are not bugs.
- TD505: `train_loss += loss` in a VAE loop (loss = recon + kld), the total reset each epoch.
- TD514: AdamW(model.parameters(), weight_decay=0.1) over LayerNorms: info from the
  optimizer's configuration; excluded norm params silent; SGD wd=5e-4 on a ResNet not a warning.
- TD512: a data set written class by class, DataLoader(shuffle=False).
- TD513: a NumPy RandomState owned by the Dataset and drawn from in __getitem__, 2 workers.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import line_of, run_all, td, write

NLL_SOFTMAX = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.fc1 = nn.Linear(8 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        output = F.softmax(x, dim=1)  # PROBS
        return output


torch.manual_seed(1)
X = torch.randn(640, 1, 16, 16)
Y = (X[:, 0, :4].mean((1, 2)) * 8).long().clamp(-5, 4) + 5
train_loader = DataLoader(TensorDataset(X, Y), batch_size=64, shuffle=True)
model = Net()
optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
for epoch in range(1, 3):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)  # LOSS
        loss.backward()
        optimizer.step()
"""

NLL_MODULE = """
import torch
from torch import nn

torch.manual_seed(0)
X = torch.randn(1000, 20)
y = (X[:, :5].sum(1) > 0).long() + (X[:, 5:10].sum(1) > 0).long() * 2
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4), nn.Softmax(dim=1))
criterion = nn.NLLLoss()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for epoch in range(2):
    perm = torch.randperm(1000)
    for i in range(0, 1000, 100):
        idx = perm[i:i + 100]
        opt.zero_grad()
        loss = criterion(model(X[idx]), y[idx])  # LOSS
        loss.backward()
        opt.step()
"""

SAME_BATCH_ITER = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
X = torch.randn(5000, 16)
y = (X @ torch.randn(16, 1)).squeeze(1)
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
xb, yb = next(iter(loader))
for step in range(40):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(xb).squeeze(1), yb)  # FED
    loss.backward()
    opt.step()
"""

SAME_BATCH_SLICE = """
import torch
import torch.nn as nn

torch.manual_seed(0)
X = torch.randn(10000, 8)
Y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
loss_fn = nn.CrossEntropyLoss()
for i in range(40):
    out = model(X[:64])  # FED
    loss = loss_fn(out, Y[:64])
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

FULL_BATCH = """
import torch
import torch.nn as nn

torch.manual_seed(0)
X = torch.linspace(-3, 3, 64).unsqueeze(1)
Y = torch.sin(X)
model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for i in range(40):
    loss = ((model(X) - Y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

# A small training split sliced off the data, trained full-batch, its rest validated.
SPLIT_FULL_BATCH = """
import torch
import torch.nn as nn

torch.manual_seed(0)
X = torch.randn(1000, 8)
Y = X[:, :1] * 2 - X[:, 1:2]
x_train, y_train = X[:200], Y[:200]
x_val, y_val = X[200:], Y[200:]
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for i in range(40):
    model.train()
    loss = nn.functional.mse_loss(model(x_train), y_train)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i % 10 == 0:
        model.eval()
        with torch.no_grad():
            val = nn.functional.mse_loss(model(x_val), y_val)
"""

VAE = """
import torch
from torch import nn, optim
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc21 = nn.Linear(32, 4)
        self.fc22 = nn.Linear(32, 4)
        self.fc3 = nn.Linear(4, 32)
        self.fc4 = nn.Linear(32, 64)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 64))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 64), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


torch.manual_seed(1)
codes = torch.randn(640, 4)
data = torch.sigmoid(codes @ torch.randn(4, 64) * 2)
train_loader = DataLoader(TensorDataset(data), batch_size=32, shuffle=True)
model = VAE()
optimizer = optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(1, 4):
    model.train()
    train_loss = 0
    for batch_idx, (data,) in enumerate(train_loader):
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss  # ACCUM
        optimizer.step()
    print("epoch", epoch, float(train_loss) / len(train_loader.dataset))
"""

WD_NORMS = """
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


torch.manual_seed(0)
V, D, T = 16, 32, 16
model = nn.Sequential(nn.Embedding(V, D), Block(D), nn.LayerNorm(D), nn.Linear(D, V))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)  # OPT
for step in range(30):
    start = torch.randint(0, V, (16, 1))
    seq = (start + torch.arange(T + 1)) % V
    x, y = seq[:, :-1], seq[:, 1:]
    logits = model(x)
    loss = nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
"""

WD_EXCLUDED_OPT = """decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3
)"""

RESNET_SGD = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
    BasicBlock(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
)
optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
criterion = nn.CrossEntropyLoss()
X = torch.randn(256, 3, 8, 8)
Y = X[:, :, :4].mean((2, 3)).argmax(1).clamp(max=3)
for epoch in range(2):
    perm = torch.randperm(256)
    for i in range(0, 256, 32):
        idx = perm[i:i + 32]
        optimizer.zero_grad()
        loss = criterion(net(X[idx]), Y[idx])
        loss.backward()
        optimizer.step()
"""

CLASS_SORTED = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
xs, ys = [], []
for c in range(5):  # the data is written class by class
    xs.append(torch.randn(200, 10) + c)
    ys.append(torch.full((200,), c))
dataset = TensorDataset(torch.cat(xs), torch.cat(ys))
loader = DataLoader(dataset, batch_size=50, shuffle=False)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
criterion = nn.CrossEntropyLoss()
for epoch in range(2):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)  # LOSS
        loss.backward()
        optimizer.step()
"""

# ImageFolder style: a file list sorted by class folder, the default DataLoader (no shuffle).
FOLDER_SORTED = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class Folder(Dataset):
    def __init__(self):
        self.samples = sorted((f"{cls}/img_{i:03d}.png", cls) for cls in range(3) for i in range(90))
        g = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(len(self.samples), 3, 8, 8, generator=g)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.pixels[i] + label, label


train_loader = DataLoader(Folder(), batch_size=16)
model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 3))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for images, labels in train_loader:
    loss = F.cross_entropy(model(images), labels)  # LOSS
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

WORKERS_AUG = """
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class NoisyPoints(Dataset):
    def __init__(self, n=512, seed=0):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 32, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.rng = np.random.RandomState(seed)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i].numpy().copy()
        if self.rng.rand() < 0.5:  # AUG
            x = x[::-1].copy()
        x = x + self.rng.normal(0, 0.1, size=x.shape)
        return torch.tensor(x, dtype=torch.float32), self.y[i]


if __name__ == "__main__":
    torch.manual_seed(0)
    loader = DataLoader(NoisyPoints(), batch_size=32, shuffle=True, num_workers=2)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for xb, yb in loader:
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
"""

WORKER_INIT = """

def reseed(worker_id):
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.RandomState(info.seed % 2**32)
"""


def _healthy_variants() -> dict[str, str]:
    return {
        "nll_log_softmax.py": NLL_SOFTMAX.replace("F.softmax(x, dim=1)", "F.log_softmax(x, dim=1)"),
        "full_batch.py": FULL_BATCH,
        "split_full_batch.py": SPLIT_FULL_BATCH,
        "vae_item.py": VAE.replace("train_loss += loss  #", "train_loss += loss.item()  #"),
        "wd_excluded.py": WD_NORMS.replace(
            "optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)  # OPT",
            WD_EXCLUDED_OPT,
        ),
        "resnet_sgd.py": RESNET_SGD,
        "class_shuffled.py": CLASS_SORTED.replace("shuffle=False", "shuffle=True"),
        "workers_global_np.py": WORKERS_AUG.replace("self.rng.rand()", "np.random.rand()").replace(
            "self.rng.normal", "np.random.normal"
        ),
        "workers_torch_rng.py": WORKERS_AUG.replace(
            "self.rng.rand() < 0.5", "torch.rand(()) < 0.5"
        ).replace("self.rng.normal(0, 0.1, size=x.shape)", "0.1 * torch.randn(x.shape).numpy()"),
        "workers_seeded.py": WORKERS_AUG.replace(
            'if __name__ == "__main__":', WORKER_INIT + '\nif __name__ == "__main__":'
        ).replace("num_workers=2)", "num_workers=2, worker_init_fn=reseed)"),
    }


BUGGY = {
    "nll_softmax.py": NLL_SOFTMAX,
    "nll_module.py": NLL_MODULE,
    "same_batch_iter.py": SAME_BATCH_ITER,
    "same_batch_slice.py": SAME_BATCH_SLICE,
    "vae.py": VAE,
    "wd_norms.py": WD_NORMS,
    "class_sorted.py": CLASS_SORTED,
    "folder_sorted.py": FOLDER_SORTED,
    "workers_aug.py": WORKERS_AUG,
}
HEALTHY = _healthy_variants()
MINE = {"TD504", "TD505", "TD506", "TD507", "TD512", "TD513", "TD514"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    jobs = {}
    for name, text in {**BUGGY, **HEALTHY}.items():
        folder = tmp_path_factory.mktemp(name.removesuffix(".py"))
        write(folder, name, text)
        jobs[name] = lambda folder=folder, name=name: td(folder, "run", name)
    return run_all(jobs)


def _script(result, name):
    return result.cwd / name


def _where(result, name, marker):
    return f"{name}:{line_of(_script(result, name), marker)}"


@pytest.mark.parametrize("name", ["nll_softmax.py", "nll_module.py"])
def test_softmax_into_nll_loss(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    f = r.finding("TD506")
    assert f["severity"] == "error"
    assert f["where"]["source"] == _where(r, name, "# LOSS")
    assert f["evidence"]["loss_fn"] == "nll_loss"
    assert f["evidence"]["input_min"] >= 0 and f["evidence"]["input_max"] <= 1
    assert f["evidence"]["observed_loss"]["last"] < 0  # a log-likelihood cannot go negative


@pytest.mark.parametrize("name", ["same_batch_iter.py", "same_batch_slice.py"])
def test_one_batch_of_a_larger_source_is_a_warning(runs, name):
    r = runs[name]
    f = r.finding("TD504")
    assert f["severity"] == "warning", f
    assert f["where"]["source"] == _where(r, name, "# FED")
    larger = f["evidence"]["larger_source"]
    if name == "same_batch_iter.py":
        assert larger == {"kind": "loader", "name": "loader", "dataset_len": 5000, "batch_size": 64}
    else:
        assert larger == {"kind": "slice", "rows": 10000, "batch_rows": 64}


@pytest.mark.parametrize("name", ["full_batch.py", "split_full_batch.py"])
def test_full_batch_training_is_at_most_info(runs, name):
    r = runs[name]
    for f in r.findings()["findings"]:
        assert not (f["code"] == "TD504" and f["severity"] != "info"), f


def test_running_total_of_the_loss_reset_each_epoch(runs):
    r = runs["vae.py"]
    f = r.finding("TD505")
    assert f["severity"] == "warning"
    assert f["where"]["source"] == _where(r, "vae.py", "# ACCUM")
    assert f["evidence"]["graphs_alive"] >= 8
    assert f["evidence"]["freed_later_at_step"] is not None


def test_decay_on_layer_norms_is_info_from_the_optimizer(runs):
    r = runs["wd_norms.py"]
    f = r.finding("TD514")
    assert f["severity"] == "info"
    assert f["where"]["source"] == _where(r, "wd_norms.py", "# OPT")
    (group,) = f["evidence"]["groups"].values()
    assert group["norm_gains"] == 3 and group["norm_biases"] == 3
    assert abs(group["decay_per_step"] - 1e-4) < 1e-12


@pytest.mark.parametrize("name", ["class_sorted.py", "folder_sorted.py"])
def test_class_sorted_data_without_shuffling(runs, name):
    r = runs[name]
    f = r.finding("TD512")
    assert f["severity"] == "warning"
    assert f["where"]["source"] == _where(r, name, "# LOSS")
    assert len(f["evidence"]["classes_in_single_batches"]) >= 2
    assert f["evidence"]["sequential_loaders"]


def test_dataset_owned_generator_shared_by_workers(runs):
    r = runs["workers_aug.py"]
    assert r.rc == 0, r
    f = r.finding("TD513")
    assert f["severity"] == "warning"
    assert f["where"]["source"] == _where(r, "workers_aug.py", "# AUG")
    assert f["evidence"]["num_workers"] == 2
    assert f["evidence"]["generators"][0]["path"] == "dataset.rng"


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_twins_stay_quiet(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    loud = [
        (f["code"], f["title"])
        for f in r.findings()["findings"]
        if f["code"] in MINE and f["severity"] in ("error", "warning")
    ]
    assert not loud, loud
    if name in ("nll_log_softmax.py", "wd_excluded.py", "class_shuffled.py", "vae_item.py"):
        assert not {f["code"] for f in r.findings()["findings"]} & MINE
    if name.startswith("workers_"):
        assert "TD513" not in r.codes()

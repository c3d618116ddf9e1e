"""Classes of bugs the ecosystem corpus's mutants showed traindoctor missing (ecosystem/), each
reproduced here independently, as a small script in a style of its own, run unchanged under the
zero-code `traindoctor run`, beside healthy twins that must stay silent.

- TD508, prediction passed as the target: `nn.MSELoss()(y, model(x))` with a (N, 1) output and
  (N,) targets (cleanrl's DQN wrote `F.mse_loss(td_target, q.gather(1, a))`).
- TD508, log_softmax over the time dim of (B, T, C) scores, flattened to (B*T, C) for
  `nll_loss` (the seq2seq tutorial's decoder with `dim=1`); a segmentation net's log_softmax
  over the channels, permuted and flattened, is the healthy twin.
- TD510, a denoiser whose first layer to run is its timestep MLP, fed 0-255 pixels (the
  improved-diffusion UNet without `/ 127.5 - 1`): the layer judged is the first to take the
  model's image input; raw float timesteps into a Linear beside scaled images stay silent.
- TD512, class-sorted data without shuffling under a head of more than 64 classes (the
  ImageNet example's 1000-way mobilenet on an ImageFolder, `shuffle=False`): a 100-way
  classifier over a data set written class by class; the shuffled twin and a character
  language model over 80 symbols stay silent.
- TD402/TD403 through a task wrapper (timm's `ClassificationTask(model, criterion)` trained as
  a whole, its inner network switched by hand): `.eval()` of the wrapped network at the start
  of each epoch, validation that calls the wrapped network itself in train mode; the healthy
  twin switches modes right, and a partial BatchNorm freeze inside it stays silent.
- TD504, one batch trained on while the program draws fresh ones (nanoGPT's `get_batch` on
  a memmap: no DataLoader, no slice of a tensor): a batch sampled once from a NumPy array
  before the loop while a periodic loss estimate samples new ones; full-batch training
  evaluated on one fixed held-out batch stays info.
- TD301/TD303 after a far too high learning rate (pytorch/examples' actor-critic at lr x1000:
  TD301 blamed torch.distributions' clamp of the saturated probabilities): a hand-written
  BCE whose clamp passed on step 1 and blocks after steps that moved the weights by more than
  their norm is info naming the lr; dead ReLUs after such steps say so, measured.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import line_of, run_all, td, write
from traindoctor.testing import assert_fires, make_timeline

SWAPPED_MSE = """
import torch
import torch.nn as nn

torch.manual_seed(0)
x = torch.randn(512, 6)
y = x @ torch.randn(6) + 0.1 * torch.randn(512)   # (N,) targets
model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 1))
criterion = nn.MSELoss()
opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
for epoch in range(3):
    for i in range(0, 512, 64):
        pred = model(x[i:i + 64])                  # (64, 1)
        loss = criterion(y[i:i + 64], pred)  # LOSS
        opt.zero_grad()
        loss.backward()
        opt.step()
"""

TAGGER = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Tagger(nn.Module):
    def __init__(self, vocab=50, tags=7, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, tags)

    def forward(self, tokens):
        h, _ = self.rnn(self.emb(tokens))
        return F.log_softmax(self.out(h), dim=1)  # NORM


torch.manual_seed(0)
tokens = torch.randint(0, 50, (256, 12))
tags = tokens % 7
net = Tagger()
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
for step in range(40):
    idx = torch.randint(0, 256, (16,))
    logp = net(tokens[idx])                                   # (16, 12, 7)
    loss = F.nll_loss(logp.reshape(-1, logp.size(-1)), tags[idx].reshape(-1))  # LOSS
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

SEGMENTER = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
images = torch.randn(64, 3, 16, 16)
masks = (images[:, 0] > 0).long() + (images[:, 1] > 1).long()   # 3 classes per pixel
net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1))
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
for step in range(30):
    idx = torch.randint(0, 64, (8,))
    logp = F.log_softmax(net(images[idx]), dim=1)                # (8, 3, 16, 16)
    flat = logp.permute(0, 2, 3, 1).reshape(-1, 3)
    loss = F.nll_loss(flat, masks[idx].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

DENOISER = """
import math
import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoid(t, dim=32):
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2) / (dim // 2))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class Denoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.time = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 16))
        self.inp = nn.Conv2d(1, 16, 3, padding=1)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x, t):
        emb = self.time(sinusoid(t))
        h = F.silu(self.inp(x) + emb[:, :, None, None])
        return self.out(F.silu(self.mid(h)))


torch.manual_seed(0)
digits = torch.randint(0, 256, (256, 1, 12, 12)).float()
data = digits  # SCALE
betas = torch.linspace(1e-4, 0.02, 200)
abar = torch.cumprod(1 - betas, 0)
net = Denoiser()
opt = torch.optim.Adam(net.parameters(), lr=2e-4)
for it in range(30):
    x0 = data[torch.randint(0, 256, (32,))]
    t = torch.randint(0, 200, (32,))
    noise = torch.randn_like(x0)
    a = abar[t][:, None, None, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    loss = F.mse_loss(net(xt, t), noise)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

SORTED_100 = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class Shards(Dataset):
    # one shard per class, read in order (as a list of per-class files would be)
    def __init__(self, classes=100, per_class=24):
        g = torch.Generator().manual_seed(0)
        self.protos = torch.randn(classes, 20, generator=g)
        self.index = [(c, i) for c in range(classes) for i in range(per_class)]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, k):
        c, i = self.index[k]
        return self.protos[c] + 0.3 * torch.randn(20), c


torch.manual_seed(0)
loader = DataLoader(Shards(), batch_size=24)  # LOADER
head = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 100))
opt = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
for xb, yb in loader:
    loss = nn.functional.cross_entropy(head(xb), yb)  # LOSS
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

CHAR_LM = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
text = torch.randint(0, 80, (20000,))
emb, rnn, out = nn.Embedding(80, 32), nn.GRU(32, 64, batch_first=True), nn.Linear(64, 80)
params = [*emb.parameters(), *rnn.parameters(), *out.parameters()]
opt = torch.optim.Adam(params, lr=2e-3)
for step in range(60):
    ix = torch.randint(0, 20000 - 33, (8,))
    x = torch.stack([text[i:i + 32] for i in ix])
    y = torch.stack([text[i + 1:i + 33] for i in ix])
    h, _ = rnn(emb(x))
    loss = F.cross_entropy(out(h).reshape(-1, 80), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

WRAPPED = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(48, 3)

    def forward(self, x):
        return self.head(self.body(x))


class Task(nn.Module):
    # owns the network and the criterion; training calls the task, validation the network
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def forward(self, x, y):
        return self.criterion(self.net(x), y)


def validate(net, xs, ys):
    net.eval()  # VALMODE
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(xs), 50):
            correct += (net(xs[i:i + 50]).argmax(1) == ys[i:i + 50]).sum().item()
    return correct / len(xs)


torch.manual_seed(0)
X = torch.randn(600, 12)
Y = (X[:, :3].argmax(1))
task = Task(Net())
opt = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9)
for epoch in range(4):
    task.net.train()  # TRAINMODE
    for i in range(0, 400, 40):
        loss = task(X[i:i + 40], Y[i:i + 40])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = validate(task.net, X[400:], Y[400:])
"""

NUMPY_BATCHES = """
import numpy as np
import torch
import torch.nn as nn

rng = np.random.default_rng(0)
table = rng.normal(size=(5000, 16)).astype(np.float32)
labels = (table[:, :2].sum(1) > 0).astype(np.int64)


def sample(n=32):
    ix = rng.integers(0, len(table), n)
    return torch.from_numpy(table[ix]), torch.from_numpy(labels[ix])


model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 2))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
xb, yb = sample()
for it in range(120):
    if it % 40 == 0:
        model.eval()
        with torch.no_grad():
            est = sum(nn.functional.cross_entropy(model(x), y).item() for x, y in [sample() for _ in range(4)])
        model.train()
    loss = nn.functional.cross_entropy(model(xb), yb)  # FED
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

HOT_LR = """
import torch
import torch.nn as nn

torch.manual_seed(0)
X = torch.randn(512, 8)
y = (X[:, 0] + X[:, 1] > 0).float()
net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.Adam(net.parameters(), lr=5.0)  # LR
for step in range(60):
    idx = torch.randint(0, 512, (64,))
    p = torch.sigmoid(net(X[idx]).squeeze(1)).clamp(1e-6, 1 - 1e-6)  # CLAMP
    loss = -(y[idx] * p.log() + (1 - y[idx]) * (1 - p).log()).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

BUGGY = {
    "swapped_mse.py": SWAPPED_MSE,
    "tagger_time_softmax.py": TAGGER,
    "denoiser_raw_pixels.py": DENOISER,
    "sorted_100_classes.py": SORTED_100,
    "wrapped_eval_in_train.py": WRAPPED.replace(
        "task.net.train()  # TRAINMODE", "task.net.eval()  # TRAINMODE"
    ),
    "wrapped_train_in_val.py": WRAPPED.replace("net.eval()  # VALMODE", "net.train()  # VALMODE"),
    "numpy_one_batch.py": NUMPY_BATCHES,
    "hot_lr_clamp.py": HOT_LR,
}
HEALTHY = {
    "swapped_mse_same_shape.py": SWAPPED_MSE.replace(
        "criterion(y[i:i + 64], pred)", "criterion(y[i:i + 64], pred.squeeze(1))"
    ),
    "tagger_class_softmax.py": TAGGER.replace("dim=1)  # NORM", "dim=-1)  # NORM"),
    "segmenter.py": SEGMENTER,
    "denoiser_scaled.py": DENOISER.replace("data = digits  # SCALE", "data = digits / 127.5 - 1"),
    # Raw float timesteps (0..199) into the first Linear, images scaled: only the images are
    # the data whose scale is judged.
    "denoiser_raw_timesteps.py": DENOISER.replace(
        "data = digits  # SCALE", "data = digits / 127.5 - 1"
    )
    .replace("nn.Linear(32, 64)", "nn.Linear(1, 64)")
    .replace("self.time(sinusoid(t))", "self.time(t.float()[:, None])"),
    "shuffled_100_classes.py": SORTED_100.replace("batch_size=24)", "batch_size=24, shuffle=True)"),
    "char_lm_80.py": CHAR_LM,
    "wrapped.py": WRAPPED,
    # BatchNorm of the body frozen on purpose from the start while the rest trains.
    "wrapped_bn_frozen.py": WRAPPED.replace(
        "task.net.train()  # TRAINMODE", "task.net.train()\n    task.net.body[1].eval()"
    ),
    # Full-batch: 32 rows are the whole training set, one fixed held-out batch of 32 rows is
    # estimated again and again.
    "numpy_full_batch.py": NUMPY_BATCHES.replace(
        "[sample() for _ in range(4)]", "[(held_x, held_y)] * 4"
    ).replace("xb, yb = sample()", "xb, yb = sample()\nheld_x, held_y = sample()"),
    "hot_lr_clamp_fixed.py": HOT_LR.replace("lr=5.0)", "lr=5e-3)"),
}
MINE = {"TD508", "TD510", "TD512", "TD504", "TD402", "TD403", "TD301", "TD303"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    jobs = {}
    for name, text in {**BUGGY, **HEALTHY}.items():
        folder = tmp_path_factory.mktemp(name.removesuffix(".py"))
        write(folder, name, text)
        jobs[name] = lambda folder=folder, name=name: td(folder, "run", name)
    return run_all(jobs)


def _where(result, name, marker):
    return f"{name}:{line_of(result.cwd / name, marker)}"


def _top3(result, code):
    top = [f for f in result.findings()["findings"] if f["severity"] in ("error", "warning")][:3]
    return code in [f["code"] for f in top]


def test_prediction_passed_as_target_broadcasts(runs):
    r = runs["swapped_mse.py"]
    assert r.rc == 0, r
    f = r.finding("TD508")
    assert f["severity"] == "error" and _top3(r, "TD508")
    assert f["where"]["source"] == _where(r, "swapped_mse.py", "# LOSS")
    ev = f["evidence"]
    assert ev["prediction_argument"] == 2 and ev["prediction_shape"] == [64, 1]
    assert ev["broadcast_shape"] == [64, 64]


def test_log_softmax_over_the_time_dim_then_flattened(runs):
    r = runs["tagger_time_softmax.py"]
    assert r.rc == 0, r
    f = r.finding("TD508")
    assert f["severity"] == "error" and _top3(r, "TD508")
    assert f["where"]["source"] == _where(r, "tagger_time_softmax.py", "# LOSS")
    ev = f["evidence"]
    assert ev["softmax_dim"] == 1 and ev["softmax_shape"] == [16, 12, 7]
    assert ev["softmax_dim_read_as_classes"] == 2 and ev["loss_dims"] == [1]
    assert "dim=2" in f["fix"]


def test_raw_pixels_into_a_denoiser_whose_time_mlp_runs_first(runs):
    r = runs["denoiser_raw_pixels.py"]
    assert r.rc == 0, r
    f = r.finding("TD510")
    assert f["severity"] == "warning" and _top3(r, "TD510")
    ev = f["evidence"]
    assert ev["first_layer"] == "inp" and ev["layer_type"] == "Conv2d"
    assert ev["input_max"] > 100 and ev["input_rms"] > 20


def test_class_sorted_batches_under_a_100_way_head(runs):
    r = runs["sorted_100_classes.py"]
    assert r.rc == 0, r
    f = r.finding("TD512")
    assert f["severity"] == "warning" and _top3(r, "TD512")
    assert f["where"]["source"] == _where(r, "sorted_100_classes.py", "# LOSS")
    ev = f["evidence"]
    assert ev["single_class_share"] == 1.0 and len(ev["classes_in_single_batches"]) >= 10
    first = ev["runs"][0][0]  # zero-code mode attaches at the first backward
    assert ev["runs"][:3] == [[first, 1], [first + 1, 1], [first + 2, 1]]


def test_wrapped_network_switched_to_eval_for_training(runs):
    r = runs["wrapped_eval_in_train.py"]
    assert r.rc == 0, r
    f = r.finding("TD402")
    assert f["severity"] == "error" and _top3(r, "TD402")
    assert f["evidence"]["models_in_eval_mode"] == ["<model>"]
    assert f["evidence"]["modules_in_eval"] == ["net.body.1", "net.body.3"]


def test_wrapped_network_validated_in_train_mode(runs):
    r = runs["wrapped_train_in_val.py"]
    assert r.rc == 0, r
    f = r.finding("TD403")
    assert f["severity"] in ("error", "warning") and _top3(r, "TD403")


def test_one_batch_while_fresh_ones_are_drawn_for_a_loss_estimate(runs):
    r = runs["numpy_one_batch.py"]
    assert r.rc == 0, r
    f = r.finding("TD504")
    assert f["severity"] == "warning" and _top3(r, "TD504")
    assert f["where"]["source"] == _where(r, "numpy_one_batch.py", "# FED")
    larger = f["evidence"]["larger_source"]
    assert larger["kind"] == "fresh_batches" and larger["distinct"] >= 3
    assert larger["shape"] == [32, 16]


def test_full_batch_with_a_fixed_held_out_batch_is_info(runs):
    r = runs["numpy_full_batch.py"]
    f = r.finding("TD504")
    assert f["severity"] == "info" and "larger_source" not in f["evidence"]


def test_clamp_saturated_by_a_far_too_high_lr_names_the_lr(runs):
    r = runs["hot_lr_clamp.py"]
    assert r.rc == 0, r
    clamp = _where(r, "hot_lr_clamp.py", "# CLAMP")
    (f,) = [
        f
        for f in r.findings()["findings"]
        if f["code"] == "TD301" and f["where"]["source"] == clamp
    ]
    assert f["severity"] == "info"
    assert "passed gradient on step 1" in f["cause"] and "learning rate far too high" in f["cause"]
    assert "lower the learning rate" in f["fix"]
    loud = [f for f in r.findings()["findings"] if f["severity"] in ("error", "warning")]
    assert loud and loud[0]["code"] == "TD210"


def _dead_tl(update):
    steps = {}
    for i, s in enumerate((1, 2, 3, 10, 20)):
        steps[s] = {
            "activations.sites": {
                "fc1": {"op": "relu", "kind": "relu", "units": 64, "window": min(i + 1, 4)}
            },
            "activations.dead": {"fc1": 1.0},
            "activations.pre_mean": {"fc1": -300.0},
            "activations.pre_std": {"fc1": 150.0},
            "activations.bias_mean": {"fc1": -100.0},
            "params.norm": {"fc1.weight": 4.0, "fc1.bias": 0.5},
            "params.update": {"fc1.weight": 4.0 * update, "fc1.bias": 0.5 * update},
        }
    return make_timeline(steps=steps)


def test_dead_relus_after_steps_larger_than_the_weights_say_so():
    f = assert_fires("TD303", _dead_tl(12.0))
    assert f.evidence["median_update_to_initial"] == 12.0
    assert "12x the weights' initial norm" in f.title and "learning rate far too high" in f.cause
    f = assert_fires("TD303", _dead_tl(0.01))  # healthy step sizes: the usual causes
    assert "median_update_to_initial" not in f.evidence and "after steps" not in f.title


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

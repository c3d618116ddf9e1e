"""Real reports of training that does not learn because of its data or its loss inputs (second
batch). Each is written as the reporter's code (made runnable on small synthetic data) and run
unchanged under the zero-code `traindoctor run` (`traindoctor check` for the one only the
experiments on a copy can see), beside the fixed twin the thread's answer gives, which must stay
silent (no error, no warning).

Caught (a right code in the top 3 errors/warnings, its cause naming the real cause):
- TD504: leohsuofnthu/Pytorch-IterativeFCN#7, `next(iter(train_loader))` at every iteration
  on a loader with shuffle=False: a fresh iterator each time, so the first batch every step.
  Its healthy variant (skhu101/GM-NAS#4: the same on a shuffled loader, a random batch each
  step) stays silent.
- TD510 (missed before: added to TD510 for it): facebookresearch/InterHand2.6M#110,
  `transforms.ToTensor()` then `/ 255.`: the images reach the first conv in [0, 1/255], a
  scale of ~2e-3, above the rule's min_scale; their range, with 1/255 itself as its top, says
  they were divided twice. The same in another style: the Dataset returns [0, 1] and the
  model's forward divides by 255 again (the loss stays at 2.30 over 3 epochs; 0.003 without it).
- TD511: MouseLand/cellpose#1220, masks stored as 0 and 1/255 and cast with `.long()` for the
  cross-entropy: every label truncates to class 0.
- TD506: PingYu-iris/SA-GCN#4 (softmax output into nn.CrossEntropyLoss), with the one-hot
  float targets of IGNF/FLAIR-1#9: probabilities reach a loss that applies log-softmax.
- TD704 under `traindoctor check`: yunjey/pytorch-tutorial#196, `nn.LSTM(...,
  batch_first=False)` fed (batch, seq, feature): the recurrence runs along the batch, so each
  example's output depends on the examples before it. Under `traindoctor run` it was silent
  until session 32; TD523 now compares the LSTM's (100, 28, 28) input with the loss's 100
  rows: a warning naming `lstm`.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, loud, reported_batch, run_scripts, script_line, top3

pytestmark = pytest.mark.slow


# leohsuofnthu/Pytorch-IterativeFCN#7: "you use next(iter(train_loader)) to fetch the patches
# every iteration ... next() would return the first element of the iterator every time".
NEXT_ITER_EACH_STEP = """
import torch
import torch.nn as nn
from torch.utils.data import Dataset, DataLoader

torch.manual_seed(0)


class CSIDataset(Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.vols = torch.rand(n, 1, 12, 12, 12, generator=g)
        self.masks = (self.vols > 0.55).float()

    def __len__(self):
        return len(self.vols)

    def __getitem__(self, i):
        return self.vols[i], self.masks[i]


class IterativeFCN(nn.Module):
    def __init__(self, num_channels=8):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(1, num_channels, 3, padding=1), nn.BatchNorm3d(num_channels), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv3d(num_channels, num_channels, 3, padding=1), nn.BatchNorm3d(num_channels), nn.ReLU())
        self.out = nn.Conv3d(num_channels, 1, 1)

    def forward(self, x):
        return self.out(self.conv2(self.conv1(x)))


train_loader = DataLoader(CSIDataset(), batch_size=4, shuffle=False)
model = IterativeFCN()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.BCEWithLogitsLoss()
iteration = 60
for it in range(iteration):
    model.train()
    img_patch, gt_patch = next(iter(train_loader))  # NEXT
    optimizer.zero_grad()
    seg = model(img_patch)
    loss = criterion(seg, gt_patch)
    loss.backward()
    optimizer.step()
    if it % 20 == 0:
        print(it, loss.item())
"""

# facebookresearch/InterHand2.6M#110: "Why divide the input image by 255 after the process of
# transforms.ToTensor? This process takes the pixel value to a very small value between 0 and
# 1/255."
DIVIDED_TWICE = """
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset, DataLoader


def to_tensor(img):  # torchvision.transforms.ToTensor on a uint8 HWC image: CHW float in [0, 1]
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255)


class Dataset_(Dataset):
    def __init__(self, n=256):
        rng = np.random.RandomState(0)
        self.imgs = rng.randint(0, 256, (n, 24, 24, 3)).astype(np.uint8)
        # joint heatmap target: where the red channel is bright
        self.targets = (self.imgs[:, ::4, ::4, 0] > 160).astype(np.float32)
        self.transform = to_tensor

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, idx):
        img = self.transform(self.imgs[idx])
        img = img / 255.  # DIV
        return img, torch.from_numpy(self.targets[idx])[None]


class PoseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(16, 1, 3, padding=1, stride=2))

    def forward(self, x):
        return self.head(self.backbone(x))


torch.manual_seed(0)
loader = DataLoader(Dataset_(), batch_size=16, shuffle=True)
model = PoseNet()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(3):
    for inputs, targets in loader:
        heatmap = model(inputs)
        loss = nn.functional.mse_loss(heatmap, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""

# The same double division written in the model (blitz/MNIST style): the Dataset already returns
# ToTensor()'s [0, 1] and forward() divides by 255 again before conv1.
DIVIDED_IN_FORWARD = """
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, DataLoader


class DigitDataset(Dataset):
    def __init__(self, n=512):
        rng = np.random.RandomState(0)
        self.labels = rng.randint(0, 10, n)
        base = rng.randint(0, 256, (10, 16, 16))
        noise = rng.randint(-40, 41, (n, 16, 16))
        self.images = np.clip(base[self.labels] + noise, 0, 255).astype(np.uint8)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0)  # ToTensor()
        return img, int(self.labels[i])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1)
        self.conv2 = nn.Conv2d(16, 32, 3, 1)
        self.fc1 = nn.Linear(32 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = x / 255.0  # SCALE
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


torch.manual_seed(0)
train_loader = DataLoader(DigitDataset(), batch_size=32, shuffle=True)
model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for epoch in range(3):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
"""

# MouseLand/cellpose#1220: "it is converting the labels to .long() type. If my max labels'
# value is float64 ~ 0.00392. This results in all-zero labels -> trivial classification".
LABELS_LONG_TRUNCATED = """
import numpy as np
import torch
import torch.nn as nn

torch.manual_seed(0)
rng = np.random.RandomState(0)
# masks saved as 8-bit images read back as float in [0, 1]: 0 and 1/255
imgs = rng.rand(64, 1, 16, 16).astype(np.float32)
masks = ((imgs > 0.6) / 255.0).astype(np.float64)  # MASK


class CPnet(nn.Module):
    def __init__(self, nout=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, nout, 1))

    def forward(self, x):
        return self.net(x)


def _loss_fn_class(lbl, y, class_weights=None):
    criterion3 = nn.CrossEntropyLoss(reduction="mean", weight=class_weights)
    loss3 = criterion3(y[:, :-1], lbl[:, 0].long())  # LONG
    return loss3


net = CPnet()
optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
for epoch in range(4):
    for k in range(0, 64, 8):
        X = torch.from_numpy(imgs[k:k + 8])
        lbl = torch.from_numpy(masks[k:k + 8])
        y = net(X)
        loss = _loss_fn_class(lbl, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""

# PingYu-iris/SA-GCN#4: nn.CrossEntropyLoss() cannot take softmax-normalized outputs; the
# targets one-hot floats as in IGNF/FLAIR-1#9.
SOFTMAX_ONEHOT_CE = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N, V, C, T = 96, 10, 5, 8  # skeletons, joints, classes, frames
A = torch.eye(V) + torch.diag(torch.ones(V - 1), 1) + torch.diag(torch.ones(V - 1), -1)
A = A / A.sum(1, keepdim=True)
x = torch.randn(N, 3, T, V)
label = x[:, 0].mean((1, 2)).mul(8).long().clamp(-2, 2) + 2
label_onehot = F.one_hot(label, C).float()  # ONEHOT


class SAGCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.gcn1 = nn.Conv2d(3, 32, 1)
        self.gcn2 = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, C)

    def forward(self, x):
        x = F.relu(torch.einsum("nctv,vw->nctw", self.gcn1(x), A))
        x = F.relu(torch.einsum("nctv,vw->nctw", self.gcn2(x), A))
        x = x.mean((2, 3))
        return F.softmax(self.fc(x), dim=1)  # SOFTMAX


model = SAGCN()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(8):
    for i in range(0, N, 16):
        output = model(x[i:i + 16])
        loss = criterion(output, label_onehot[i:i + 16])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""

# yunjey/pytorch-tutorial#196: "change batch_first=True to False. But the result: both loss
# (about 2) and accuracy (about 11.35%) is not good."
LSTM_BATCH_FIRST_FALSE = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

sequence_length = 14
input_size = 14
hidden_size = 32
num_layers = 1
num_classes = 4
batch_size = 32
num_epochs = 2
learning_rate = 0.01
torch.manual_seed(0)
images = torch.rand(640, sequence_length, input_size)
labels = images[:, :, :4].mean(1).argmax(1)
train_loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)


class RNN(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers, num_classes):
        super(RNN, self).__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=False)  # LSTM
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        out = self.fc(out[:, -1, :])
        return out


model = RNN(input_size, hidden_size, num_layers, num_classes)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
for epoch in range(num_epochs):
    for i, (images_b, labels_b) in enumerate(train_loader):
        images_b = images_b.reshape(-1, sequence_length, input_size)
        outputs = model(images_b)
        loss = criterion(outputs, labels_b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""


def _twins() -> dict[str, str]:
    return {
        "next_iter_each_step": fixed_twin(
            NEXT_ITER_EACH_STEP,
            [
                (
                    "for it in range(iteration):\n",
                    "data_iter = iter(train_loader)\nfor it in range(iteration):\n",
                ),
                (
                    "    img_patch, gt_patch = next(iter(train_loader))  # NEXT\n",
                    "    try:\n"
                    "        img_patch, gt_patch = next(data_iter)  # NEXT\n"
                    "    except StopIteration:\n"
                    "        data_iter = iter(train_loader)\n"
                    "        img_patch, gt_patch = next(data_iter)\n",
                ),
            ],
        ),
        # skhu101/GM-NAS#4: the same next(iter(...)) on a shuffled loader draws a random batch
        "next_iter_shuffled": fixed_twin(NEXT_ITER_EACH_STEP, [("shuffle=False", "shuffle=True")]),
        "divided_twice": fixed_twin(DIVIDED_TWICE, [("        img = img / 255.  # DIV\n", "")]),
        "divided_in_forward": fixed_twin(
            DIVIDED_IN_FORWARD, [("        x = x / 255.0  # SCALE\n", "")]
        ),
        "labels_long_truncated": fixed_twin(
            LABELS_LONG_TRUNCATED,
            [("lbl[:, 0].long())  # LONG", "(lbl[:, 0] > 0).long())  # LONG")],
        ),
        "softmax_onehot_ce": fixed_twin(
            SOFTMAX_ONEHOT_CE,
            [("return F.softmax(self.fc(x), dim=1)  # SOFTMAX", "return self.fc(x)  # SOFTMAX")],
        ),
    }


BUGGY = {
    "next_iter_each_step": NEXT_ITER_EACH_STEP,
    "divided_twice": DIVIDED_TWICE,
    "divided_in_forward": DIVIDED_IN_FORWARD,
    "labels_long_truncated": LABELS_LONG_TRUNCATED,
    "softmax_onehot_ce": SOFTMAX_ONEHOT_CE,
    "lstm_batch_first_false": LSTM_BATCH_FIRST_FALSE,
}
HEALTHY = {f"{name}_fixed": text for name, text in _twins().items()}
LSTM_FIXED = fixed_twin(LSTM_BATCH_FIRST_FALSE, [("batch_first=False)", "batch_first=True)")])


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    scripts = {"lstm_batch_first_false": LSTM_BATCH_FIRST_FALSE, "lstm_fixed": LSTM_FIXED}
    return run_scripts(tmp_path_factory, scripts, "check")


def test_next_iter_of_an_unshuffled_loader_at_every_step(runs):
    r = runs["next_iter_each_step"]
    assert r.rc == 0, r
    f = top3(r, "TD504")
    assert "bit-identical fingerprints" in f["cause"]
    assert "36 of them are never trained on" in f["cause"]


def test_images_divided_by_255_after_to_tensor(runs):
    r = runs["divided_twice"]
    assert r.rc == 0, r
    f = top3(r, "TD510")
    assert f["where"]["module"] == "backbone.0"
    assert f["evidence"]["divided_twice_by_255"] is True
    assert "divided by 255 twice" in f["cause"]
    assert "ToTensor" in f["fix"]


def test_images_divided_by_255_again_in_forward(runs):
    r = runs["divided_in_forward"]
    assert r.rc == 0, r
    f = top3(r, "TD510")
    assert f["where"]["module"] == "conv1"
    assert f["evidence"]["divided_twice_by_255"] is True


def test_float_masks_cast_to_long_are_all_class_0(runs):
    r = runs["labels_long_truncated"]
    assert r.rc == 0, r
    f = top3(r, "TD511")
    assert f["where"]["source"] == script_line(r, "# LONG")
    assert "is class 0" in f["title"]


def test_softmax_into_cross_entropy_with_one_hot_targets(runs):
    r = runs["softmax_onehot_ce"]
    assert r.rc == 0, r
    f = top3(r, "TD506")
    assert "SoftmaxBackward0" in f["title"]
    assert "0.905" in f["title"]  # log(1 + (C - 1) / e), C = 5


def test_lstm_without_batch_first_is_seen_by_the_run_and_the_experiments(runs, checks):
    f = top3(runs["lstm_batch_first_false"], "TD523")
    assert f["where"]["module"] == "lstm"
    r = checks["lstm_batch_first_false"]
    assert r.rc == 0, r
    f = top3(r, "TD704")
    assert "an RNN run along the batch" in f["cause"]
    assert loud(checks["lstm_fixed"]) == [], checks["lstm_fixed"]

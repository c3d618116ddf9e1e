"""Real reports of training loops that do not learn, each written as the reporter's code (made
runnable on small synthetic data) and run unchanged under the zero-code `traindoctor run`, beside
the fixed twin the thread's answer gives, which must stay silent (no error, no warning).

Caught (a right code in the top 3 errors/warnings, its cause naming the real cause):
- TD110 + TD101: ronghuaiyang/arcface-pytorch#56 (also lxztju/pytorch_classification#32): after
  "element 0 of tensors does not require grad" the reporter set `loss.requires_grad = True`;
  "the loss is not decline, and the acc is always zero". Here a freezing loop covered the
  whole model (the fine-tuning freeze run after the head was attached).
- TD103: udacity/deep-learning-v2-pytorch#12, `param.require_grad = False` (no s) freezes
  nothing; the optimizer holds the classifier only, so the backbone's gradients are computed
  and never applied.
- TD108, its cause naming shuffled or misaligned labels first: udacity/sdc-issue-reports#1326,
  features and labels shuffled with two different orders.
- TD503: ivadomed/ivadomed#55, CosineAnnealingLR(T_max=epochs) stepped per batch.

Silent twins of the misses below: the LSTM with its hidden state detached each batch, the
policy with Softmax(dim=-1), the language model with ignore_index.

Misses, not closed:
- DeepReinforcementLearningInAction#32: the policy ends in `nn.Softmax(dim=0)`, right for one
  state, wrong on the episode's (T, 2) batch (each action's probabilities are normalized down
  the batch) and the REINFORCE loss is written by hand (`-sum(r * log(p))`), so no patched loss
  sees the output. Catching it needs the forward probe to record that the model's output comes
  out of a softmax over dim 0 with more than one row (a probe change outside this task); a
  softmax over dim 0 is also the attention pooling of multiple-instance learning, so it could
  not be more than a note without knowing the output is a policy or a classifier head.
- lucidrains/DALLE-pytorch#57 (also lukas-blecher/LaTeX-OCR#305): `ignore_index` defined but
  not passed, so the padding id counts in the cross-entropy (here 79% of the targets are the
  padding id 0). The label histogram shows one dominant class, as an imbalanced data set or the
  background class of a segmentation does: no verdict without knowing which id pads.
- hazdzz/stgcn#18: StepLR(step_size=10, gamma=0.95), sized in epochs, stepped per batch. On a
  run long enough for the lr to collapse (0.95^90 <= 0.01: 900 batches; caught at 2,000 steps,
  TD503 error "collapsed ... at step 901") it is caught, but that run takes over a minute here;
  on a 3-epoch run of 114 batches the lr is still 0.57x its start and nothing in the run tells
  an epoch-sized step_size from an iteration-sized one (the loader's length is not compared).
- pytorch/pytorch#2198: the LSTM's hidden state carried across batches without detach and
  `backward(retain_graph=True)` raises in torch 2.x ("modified by an inplace operation": the
  optimizer step changed weights the old graph saved); the report names the exception and the
  line, not the missing detach.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import line_of, loud, reported_batch

pytestmark = pytest.mark.slow


# ronghuaiyang/arcface-pytorch#56 (also lxztju/pytorch_classification#32): backward() raised
# "element 0 of tensors does not require grad", the reporter added `loss.requires_grad = True`;
# then "the loss is not decline, and the acc is always zero". Here the cause upstream is a
# fine-tuning freeze loop run after the new head was attached, so nothing has a gradient.
LOSS_REQUIRES_GRAD = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class ResNetFace(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.fc = nn.Linear(8 * 16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


torch.manual_seed(0)
model = ResNetFace(num_classes=10)
for param in model.parameters():  # FREEZE
    param.requires_grad = False
x = torch.randn(320, 1, 12, 12)
label = (x[:, 0, :6].mean((1, 2)) * 10).long().clamp(-5, 4) + 5
trainloader = DataLoader(TensorDataset(x, label), batch_size=32, shuffle=True)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
for epoch in range(3):
    model.train()
    for ii, (data_input, label_b) in enumerate(trainloader):
        output = model(data_input)
        loss = criterion(output, label_b)
        loss.requires_grad = True  # LOSS
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        acc = (output.argmax(1) == label_b).float().mean()
    print(epoch, loss.item(), acc.item())
"""

# udacity/deep-learning-v2-pytorch#12: the transfer-learning solution "freezes" the VGG features
# with `param.require_grad = False` (missing s): nothing is frozen; the optimizer holds only the
# classifier, so every step computes the gradient of the whole backbone for nothing.
REQUIRE_GRAD_TYPO = """
import torch
import torch.nn as nn
import torch.optim as optim


class VGG16(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


torch.manual_seed(0)
vgg16 = VGG16()
# Freeze training for all "features" layers
for param in vgg16.features.parameters():
    param.require_grad = False  # TYPO
criterion = nn.CrossEntropyLoss()
optimizer = optim.SGD(vgg16.classifier.parameters(), lr=0.001)  # OPT
images = torch.randn(320, 3, 16, 16)
targets = images[:, :, :8].mean((2, 3)).argmax(1) + 2 * (images[:, 0].mean((1, 2)) > 0).long()
for epoch in range(2):
    for batch_i in range(0, 320, 20):
        data, target = images[batch_i:batch_i + 20], targets[batch_i:batch_i + 20]
        optimizer.zero_grad()
        output = vgg16(data)
        loss = criterion(output, target)
        loss.backward()
        optimizer.step()
"""

# udacity/sdc-issue-reports#1326: features and labels shuffled separately (different orders),
# so every label belongs to another example; the quiz did not check that they still match.
SHUFFLE_SEPARATELY = """
import numpy as np
import torch
import torch.nn as nn

rng = np.random.RandomState(0)
torch.manual_seed(0)
features = rng.randn(2000, 20).astype(np.float32)
labels = (features[:, :3].sum(1) > 0).astype(np.int64) + 2 * (features[:, 3] > 0)
np.random.seed(1)
np.random.shuffle(features)  # SHUFFLE
np.random.shuffle(labels)


def batches(batch_size, features, labels):
    out = []
    for start_i in range(0, len(features), batch_size):
        end_i = start_i + batch_size
        out.append([features[start_i:end_i], labels[start_i:end_i]])
    return out


model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(2):
    for batch_features, batch_labels in batches(64, features, labels):
        logits = model(torch.from_numpy(batch_features))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(batch_labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""

# ivadomed/ivadomed#55: "Scheduler was incorrectly stepped in the batch loop instead of in the
# epoch loop ... causing the LR to be updated after each batch" (CosineAnnealingLR, T_max epochs).
IVADOMED_COSINE_PER_BATCH = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
num_epochs = 4
imgs = torch.rand(256, 1, 16, 16)
gts = (imgs > 0.6).float()
train_loader = DataLoader(TensorDataset(imgs, gts), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, num_epochs)


def dice_loss(input, target):
    smooth = 1.0
    iflat, tflat = input.view(-1), target.view(-1)
    intersection = (iflat * tflat).sum()
    return -(2.0 * intersection + smooth) / (iflat.sum() + tflat.sum() + smooth)


for epoch in range(1, num_epochs + 1):
    model.train()
    train_loss_total = 0.0
    for i, (input_samples, gt_samples) in enumerate(train_loader):
        preds = torch.sigmoid(model(input_samples))
        loss = dice_loss(preds, gt_samples)
        train_loss_total += loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()  # SCHED
    print(epoch, train_loss_total / (i + 1), scheduler.get_last_lr())
"""

# pytorch/pytorch#2198 ("Memory leak problem in LSTM and RNN"): the hidden state is carried from
# batch to batch without detach, so backward() needed retain_graph=True and every step keeps
# (and backpropagates through) the whole history. apaszke: "`hidden` will prevent any part of
# the graph from being freed ... Adding a periodical .detach_()".
LSTM_HIDDEN_RETAIN = """
import torch
import torch.nn as nn


class LSTMTagger(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.lstm = nn.LSTM(input_dim, hidden_dim)
        self.fc = nn.Linear(hidden_dim, output_dim)

    def init_hidden(self, batch):
        return (torch.zeros(1, batch, self.hidden_dim), torch.zeros(1, batch, self.hidden_dim))

    def forward(self, x, hidden):
        out, hidden = self.lstm(x, hidden)
        return self.fc(out), hidden


torch.manual_seed(0)
seq_len, batch, n_in = 10, 8, 4
signal = torch.randn(seq_len * 40, batch, n_in)
target = (signal[:, :, :1] + torch.roll(signal[:, :, 1:2], 1, 0)) / 2  # stationary
model = LSTMTagger(n_in, 16, 1)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
criterion = nn.MSELoss()
hidden = model.init_hidden(batch)
for epoch in range(1):
    for i in range(0, signal.size(0), seq_len):
        x, y = signal[i:i + seq_len], target[i:i + seq_len]
        optimizer.zero_grad()
        output, hidden = model(x, hidden)  # HIDDEN
        loss = criterion(output, y)
        loss.backward(retain_graph=True)
        optimizer.step()
"""

# DeepReinforcementLearningInAction#32: the policy net ends in torch.nn.Softmax(dim=0), fine for
# one state but, on the batch of an episode, the probabilities are computed down the batch.
REINFORCE_SOFTMAX_DIM0 = """
import numpy as np
import torch

torch.manual_seed(0)
rng = np.random.RandomState(0)
l1, l2, l3 = 4, 150, 2
model = torch.nn.Sequential(
    torch.nn.Linear(l1, l2),
    torch.nn.LeakyReLU(),
    torch.nn.Linear(l2, l3),
    torch.nn.Softmax(dim=0),  # SOFTMAX
)
learning_rate = 0.0009
optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)


def discount_rewards(rewards, gamma=0.99):
    lenr = len(rewards)
    disc_return = torch.pow(gamma, torch.arange(lenr).float()) * rewards
    disc_return /= disc_return.max()
    return disc_return


def loss_fn(preds, r):
    return -1 * torch.sum(r * torch.log(preds))  # LOSS


def env_step(state, action):  # a toy pole: the action pushes the angle back or forward
    angle = state[2] + (0.05 if action == 1 else -0.05) + rng.normal(0, 0.02)
    state = np.array([state[0], state[1], angle, state[3]], dtype=np.float32)
    return state, abs(angle) > 0.3


MAX_DUR, MAX_EPISODES, gamma = 50, 60, 0.99
for episode in range(MAX_EPISODES):
    curr_state = rng.uniform(-0.05, 0.05, 4).astype(np.float32)
    transitions = []
    for t in range(MAX_DUR):
        act_prob = model(torch.from_numpy(curr_state).float())
        action = rng.choice(np.array([0, 1]), p=act_prob.data.numpy())
        prev_state = curr_state
        curr_state, done = env_step(curr_state, action)
        transitions.append((prev_state, action, t + 1))
        if done:
            break
    reward_batch = torch.Tensor([r for (s, a, r) in transitions]).flip(dims=(0,))
    disc_returns = discount_rewards(reward_batch)
    state_batch = torch.Tensor(np.array([s for (s, a, r) in transitions]))
    action_batch = torch.Tensor([a for (s, a, r) in transitions])
    pred_batch = model(state_batch)
    prob_batch = pred_batch.gather(dim=1, index=action_batch.long().view(-1, 1)).squeeze()
    loss = loss_fn(prob_batch, disc_returns)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

# lucidrains/DALLE-pytorch#57 (and lukas-blecher/LaTeX-OCR#305): `ignore_index` is defined but
# the cross-entropy is computed without it, so the padding (id 0) of the text counts in the loss.
PAD_NOT_IGNORED = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
V, T, D = 24, 32, 32
pad_id = 0


def make_batch(n=16):
    lengths = torch.randint(4, 12, (n,))
    seq = torch.full((n, T), pad_id)
    for i, L in enumerate(lengths.tolist()):
        start = torch.randint(1, V, (1,)).item()
        seq[i, :L] = (start + torch.arange(L)) % (V - 1) + 1
    return seq


class TinyLM(nn.Module):
    def __init__(self, ignore_index=pad_id):
        super().__init__()
        self.ignore_index = ignore_index
        self.emb = nn.Embedding(V, D)
        self.rnn = nn.GRU(D, D, batch_first=True)
        self.head = nn.Linear(D, V)

    def forward(self, text, return_loss=False):
        h, _ = self.rnn(self.emb(text[:, :-1]))
        logits = self.head(h)
        if not return_loss:
            return logits
        labels = text[:, 1:]
        return F.cross_entropy(logits.transpose(1, 2), labels)  # LOSS


model = TinyLM()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for step in range(60):
    loss = model(make_batch(), return_loss=True)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


def _twins() -> dict[str, str]:
    return {
        "loss_requires_grad": _fixed(
            LOSS_REQUIRES_GRAD,
            [
                (
                    "for param in model.parameters():  # FREEZE\n    param.requires_grad = False\n",
                    "",
                ),
                ("        loss.requires_grad = True  # LOSS\n", ""),
            ],
        ),
        "require_grad_typo": _fixed(
            REQUIRE_GRAD_TYPO,
            [("param.require_grad = False  # TYPO", "param.requires_grad = False  # TYPO")],
        ),
        "shuffle_separately": _fixed(
            SHUFFLE_SEPARATELY,
            [
                (
                    "np.random.shuffle(features)  # SHUFFLE\nnp.random.shuffle(labels)",
                    "perm = np.random.permutation(len(features))  # SHUFFLE\nfeatures, labels = features[perm], labels[perm]",
                )
            ],
        ),
        "ivadomed_cosine_per_batch": _fixed(
            IVADOMED_COSINE_PER_BATCH,
            [
                ("        scheduler.step()  # SCHED\n", ""),
                (
                    "    print(epoch, train_loss_total",
                    "    scheduler.step()  # SCHED\n    print(epoch, train_loss_total",
                ),
            ],
        ),
        "lstm_hidden_retain": _fixed(
            LSTM_HIDDEN_RETAIN,
            [
                (
                    "        output, hidden = model(x, hidden)  # HIDDEN",
                    "        hidden = tuple(h.detach() for h in hidden)\n        output, hidden = model(x, hidden)  # HIDDEN",
                ),
                ("loss.backward(retain_graph=True)", "loss.backward()"),
            ],
        ),
        "reinforce_softmax_dim0": _fixed(
            REINFORCE_SOFTMAX_DIM0,
            [("torch.nn.Softmax(dim=0),  # SOFTMAX", "torch.nn.Softmax(dim=-1),  # SOFTMAX")],
        ),
        "pad_not_ignored": _fixed(
            PAD_NOT_IGNORED,
            [
                (
                    "F.cross_entropy(logits.transpose(1, 2), labels)  # LOSS",
                    "F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=self.ignore_index)  # LOSS",
                )
            ],
        ),
    }


def _fixed(text: str, edits: list[tuple[str, str]]) -> str:
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


BUGGY = {
    "loss_requires_grad": LOSS_REQUIRES_GRAD,
    "require_grad_typo": REQUIRE_GRAD_TYPO,
    "shuffle_separately": SHUFFLE_SEPARATELY,
    "ivadomed_cosine_per_batch": IVADOMED_COSINE_PER_BATCH,
}
HEALTHY = {f"{name}_fixed": text for name, text in _twins().items()}


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def _top3(result, code):
    top = loud(result)[:3]
    assert code in top, f"{code} not in the top 3 {top}\n{result}"
    return result.finding(code)


def _line(result, marker):
    return f"train.py:{line_of(result.cwd / 'train.py', marker)}"


def test_loss_made_to_require_grad_over_a_frozen_model(runs):
    r = runs["loss_requires_grad"]
    assert r.rc == 0, r
    assert "frozen" in _top3(r, "TD110")["cause"]
    f = _top3(r, "TD101")
    assert f["where"]["source"] == _line(r, "loss.backward()")


def test_misspelled_requires_grad_leaves_the_backbone_training(runs):
    r = runs["require_grad_typo"]
    assert r.rc == 0, r
    f = _top3(r, "TD103")
    assert f["where"]["module"] == "features"
    assert f["where"]["source"] == _line(r, "# OPT")
    assert "requires_grad_(False)" in f["fix"]


def test_features_and_labels_shuffled_apart(runs):
    r = runs["shuffle_separately"]
    assert r.rc == 0, r
    f = _top3(r, "TD108")
    assert f["severity"] == "warning"
    # Since 84ac5fb the cause is measured: the loss sits at the entropy of the labels seen.
    assert "entropy of the labels seen" in f["cause"]
    assert "shuffled separately" in f["cause"]


def test_cosine_sized_in_epochs_stepped_per_batch(runs):
    r = runs["ivadomed_cosine_per_batch"]
    assert r.rc == 0, r
    f = _top3(r, "TD503")
    assert f["where"]["source"] == _line(r, "# SCHED")
    assert f["evidence"]["cases"][0]["kind"] == "cosine_restarts"

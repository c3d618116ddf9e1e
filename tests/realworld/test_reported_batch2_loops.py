"""Real reports of training loops that do not learn (second batch): the optimizer, the gradient
zeroing, no_grad, the lr schedule and a frozen backbone. Each is written as the reporter's code
(made runnable on small synthetic data) and run unchanged under the zero-code `traindoctor run`,
beside the fixed twin the thread's answer gives, which must stay silent (no error, no warning).

Caught (a right code in the top 3 errors/warnings, its cause naming the real cause):
- TD111 + TD103: spro/practical-pytorch#9 (also #21), char-rnn classification: the RNN is
  instantiated twice, the optimizer is built over the first instance and the loop trains the
  second ("loss is big, and loss flow up and down"); the optimizer steps tensors nothing uses.
- TD102: optimizer.zero_grad() between loss.backward() and optimizer.step() (the one placement
  of zero_grad that is wrong, https://velog.io/@rhss10/기본-optimizer.zerograd는-어디에-넣어주어야-할까):
  step() sees no gradient; the cause names the placement.
- TD102: nayeon7lee/bert-summarization#7, a `generate_refinement_output` helper with
  `torch.no_grad()` inside, called in the training forward: its module never gets a gradient.
- TD516: kdexd/virtex#16, linear evaluation with the backbone frozen (requires_grad=False) but
  the model in train mode: its BatchNorm running statistics are overwritten by the new data.
- TD108, its cause naming the lr (missed before: the cause said "the parameters do not change at
  all", false after the first epoch): huggingface/transformers#20916, HF's
  get_polynomial_decay_schedule_with_warmup (a LambdaLR sized in steps) returned from a
  LightningModule's configure_optimizers without interval='step', so Lightning steps it once an
  epoch: the lr is exactly 0 for the whole first epoch and 1/8, 2/8 of its value after.
- TD517 (warning): FunctionLab/selene#115, ReduceLROnPlateau(mode='max') stepped with a
  validation loss: lr cuts after windows where the value reached its lowest so far. Its mirror,
  md-mohaiminul/ViS4mer#4 (the default mode='min' stepped with a validation accuracy), is TD517
  as info: a validation loss rising while the model overfits looks the same.

- TD108 (missed until 84ac5fb): the same warmup in a plain loop: HF's
  get_linear_schedule_with_warmup sized in batches (10% of 100) and `scheduler.step()` in the
  epoch loop: lr 0 for the first epoch (25 of 100 steps), then 0.1, 0.2, 0.3 of its value; the
  loss falls 1.38 -> 1.25 (0.89 in the fixed twin), so TD108 judges the stretch of steps at lr
  exactly 0 and points at the `scheduler.step()` line.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, reported_batch, script_line, top3

pytestmark = pytest.mark.slow


# spro/practical-pytorch#9: "I have the model instantiated twice - once directly after the RNN
# class, and once before the main loop. Try moving the optimizer to below the second one."
OPTIMIZER_OTHER_INSTANCE = """
import torch
import torch.nn as nn

torch.manual_seed(0)
all_letters = "abcdefghijklmnopqrstuvwxyz"
n_letters = len(all_letters)
all_categories = ["English", "French", "Russian", "Japanese"]
n_categories = len(all_categories)
# a name "is" of a category when its letters are drawn from that category's part of the alphabet
g = torch.Generator().manual_seed(1)


def random_training_pair():
    c = torch.randint(0, n_categories, (1,), generator=g).item()
    length = torch.randint(3, 8, (1,), generator=g).item()
    idx = (torch.randint(0, 7, (length,), generator=g) + 6 * c) % n_letters
    line_tensor = torch.zeros(length, 1, n_letters)
    line_tensor[torch.arange(length), 0, idx] = 1
    return torch.tensor([c]), line_tensor


class RNN(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(RNN, self).__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size + hidden_size, hidden_size)
        self.i2o = nn.Linear(input_size + hidden_size, output_size)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, input, hidden):
        combined = torch.cat((input, hidden), 1)
        hidden = self.i2h(combined)
        output = self.softmax(self.i2o(combined))
        return output, hidden

    def initHidden(self):
        return torch.zeros(1, self.hidden_size)


n_hidden = 64
rnn = RNN(n_letters, n_hidden, n_categories)
learning_rate = 0.05
criterion = nn.NLLLoss()
optimizer = torch.optim.SGD(rnn.parameters(), lr=learning_rate)  # OPT


def train(category_tensor, line_tensor):
    hidden = rnn.initHidden()
    optimizer.zero_grad()
    for i in range(line_tensor.size()[0]):
        output, hidden = rnn(line_tensor[i], hidden)
    loss = criterion(output, category_tensor)
    loss.backward()
    optimizer.step()
    return output, loss.item()


rnn = RNN(n_letters, n_hidden, n_categories)  # SECOND
current_loss = 0
for iter in range(1, 301):
    category_tensor, line_tensor = random_training_pair()
    output, loss = train(category_tensor, line_tensor)
    current_loss += loss
    if iter % 100 == 0:
        print(iter, current_loss / 100)
        current_loss = 0
"""

# optimizer.zero_grad() called after backward(), right before step(): the gradients are gone.
ZERO_GRAD_BEFORE_STEP = """
import torch
import torch.nn as nn

torch.manual_seed(0)
x = torch.randn(512, 10)
w_true = torch.randn(10, 1)
y = x @ w_true + 0.1 * torch.randn(512, 1)


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.layers(x)


model = Regressor()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
for epoch in range(5):
    for i in range(0, 512, 32):
        pred = model(x[i:i + 32])
        loss = nn.functional.mse_loss(pred, y[i:i + 32])
        loss.backward()
        optimizer.zero_grad()  # ZERO
        optimizer.step()
        scheduler.step()
"""

# nayeon7lee/bert-summarization#7: "This function has torch.no_grad() inside. Does that mean
# you do not track gradients during training?"
NO_GRAD_IN_FORWARD = """
import torch
import torch.nn as nn

torch.manual_seed(0)
V, D, T = 40, 32, 12


class Summarizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.GRU(D, D, batch_first=True)
        self.embedding = nn.Embedding(V, D)
        self.refine = nn.Sequential(nn.Linear(D, D), nn.Tanh())
        self.generator = nn.Linear(D, V)

    def generate_refinement_output(self, enc):
        with torch.no_grad():  # NOGRAD
            return self.refine(enc)

    def forward(self, src):
        enc, _ = self.encoder(self.embedding(src))
        refined = self.generate_refinement_output(enc)
        return self.generator(refined + enc)


def batch(n=16):
    start = torch.randint(0, V, (n, 1))
    return (start + torch.arange(T + 1)) % V


model = Summarizer()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
criterion = nn.CrossEntropyLoss()


def train_one_batch(seq):
    logits = model(seq[:, :-1])
    loss = criterion(logits.reshape(-1, V), seq[:, 1:].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


for step in range(60):
    train_one_batch(batch())
"""

# kdexd/virtex#16: "the models are set with .train() ... the running averages of BatchNorm
# layers will be accumulated ... the backbone model seems not to be fully frozen."
FROZEN_BACKBONE_TRAIN_MODE = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


def conv_bn(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class VisualBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = nn.Sequential(conv_bn(3, 16), nn.MaxPool2d(2), conv_bn(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.cnn(x)


class FeatureExtractor(nn.Module):
    def __init__(self, backbone, num_classes=10):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(32, num_classes)

    def forward(self, image):
        return self.fc(self.backbone(image))


torch.manual_seed(0)
backbone = VisualBackbone()
# "pretrained": a few steps of its own training moved the running statistics
with torch.no_grad():
    for _ in range(20):
        backbone(torch.rand(16, 3, 16, 16) * 2 + 1)
backbone.eval()
model = FeatureExtractor(backbone)
# Freeze all layers except the fully connected layer
for name, param in model.named_parameters():
    if "fc" not in name:
        param.requires_grad = False
images = torch.randn(512, 3, 16, 16)
labels = images.mean((1, 2, 3)).mul(20).long().clamp(-5, 4) + 5
loader = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
criterion = nn.CrossEntropyLoss()
model.train()  # TRAIN
for epoch in range(2):
    for image, label in loader:
        logits = model(image)
        loss = criterion(logits, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""

# huggingface/transformers#20916: "this will produce a LambdaLR that will return a
# multiplicative factor of 0 for the entirety of the first epoch" (under Lightning).
HF_SCHEDULE_PER_EPOCH = """
import lightning.pytorch as pl
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset


def get_polynomial_decay_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps, lr_end=1e-7, power=1.0):
    lr_init = optimizer.defaults["lr"]

    def lr_lambda(current_step: int):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        elif current_step > num_training_steps:
            return lr_end / lr_init
        else:
            lr_range = lr_init - lr_end
            decay_steps = num_training_steps - num_warmup_steps
            pct_remaining = 1 - (current_step - num_warmup_steps) / decay_steps
            return (lr_range * pct_remaining**power + lr_end) / lr_init

    return LambdaLR(optimizer, lr_lambda)


class EHRModel(pl.LightningModule):
    def __init__(self, num_training_steps, num_warmup_steps):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
        self.num_training_steps = num_training_steps
        self.num_warmup_steps = num_warmup_steps

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
        sched = get_polynomial_decay_schedule_with_warmup(opt, self.num_warmup_steps, self.num_training_steps)  # SCHED
        return {"optimizer": opt, "lr_scheduler": sched}


torch.manual_seed(0)
x = torch.randn(1024, 20)
y = (x[:, :5] * torch.arange(1, 6)).argmax(1)
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
epochs = 3
model = EHRModel(num_training_steps=epochs * len(loader), num_warmup_steps=len(loader) // 4)
trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
trainer.fit(model, loader)
"""

# The same warmup stepped once an epoch in a plain loop (HF's get_linear_schedule_with_warmup,
# num_warmup_steps sized in batches, scheduler.step() in the epoch loop).
WARMUP_PER_EPOCH = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import get_linear_schedule_with_warmup

torch.manual_seed(0)
x = torch.randn(1600, 24)
y = (x[:, :6] @ torch.randn(6, 4)).argmax(1)
train_dataloader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
model = nn.Sequential(nn.Linear(24, 64), nn.GELU(), nn.Linear(64, 4))
epochs = 4
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
total_steps = len(train_dataloader) * epochs
scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=int(0.1 * total_steps), num_training_steps=total_steps)
for epoch_i in range(epochs):
    total_train_loss = 0
    model.train()
    for step, (b_input, b_labels) in enumerate(train_dataloader):
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(b_input), b_labels)
        total_train_loss += loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    scheduler.step()  # SCHED
    print(epoch_i, total_train_loss / len(train_dataloader))
"""

# FunctionLab/selene#115: "the learning rate scheduler reduces LR when the maximum loss is not
# increased ... the mode was not switched from max to min".
PLATEAU_MAX_ON_LOSS = """
import torch
import torch.nn as nn

torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
seq = torch.randint(0, 4, (1200, 60), generator=g)
x_all = torch.nn.functional.one_hot(seq, 4).float().transpose(1, 2)
y_all = ((seq[:, 20:40] == 2).sum(1) > 5).float().unsqueeze(1)
x_train, y_train, x_val, y_val = x_all[:1000], y_all[:1000], x_all[1000:], y_all[1000:]


class DeeperSEA(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(4, 16, 8), nn.ReLU(), nn.MaxPool1d(4), nn.Conv1d(16, 16, 4), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 10, 1))

    def forward(self, x):
        return self.classifier(self.conv(x))


class TrainModel:
    def __init__(self, model, criterion, optimizer_class, optimizer_kwargs, max_steps, report_stats_every_n_steps):
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer_class(self.model.parameters(), **optimizer_kwargs)
        self.max_steps = max_steps
        self.nth_step_report_stats = report_stats_every_n_steps
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, 'max', patience=2, factor=0.8)  # PLATEAU

    def train_and_validate(self):
        for step in range(self.max_steps):
            self.train(step)
            if step % self.nth_step_report_stats == 0:
                validation_loss = self.validate()
                self.scheduler.step(validation_loss)  # SCHED

    def train(self, step):
        self.model.train()
        i = (step * 32) % 1000
        inputs, targets = x_train[i:i + 32], y_train[i:i + 32]
        predictions = self.model(inputs)
        loss = self.criterion(predictions, targets)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def validate(self):
        self.model.eval()
        with torch.no_grad():
            return self.criterion(self.model(x_val), y_val).item()


trainer = TrainModel(DeeperSEA(), nn.BCEWithLogitsLoss(), torch.optim.SGD,
                     {"lr": 0.2, "momentum": 0.9}, max_steps=400, report_stats_every_n_steps=8)
trainer.train_and_validate()
print(trainer.optimizer.param_groups[0]["lr"])
"""

# md-mohaiminul/ViS4mer#4: "ReduceLROnPlateau by default assumes a 'min' metric ... it is used
# for accuracy metric, but the mode is not changed."
PLATEAU_MIN_ON_ACCURACY = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
feats = torch.randn(1200, 12, 16)  # video clips: 12 frames of 16 features
labels = (feats[:, :, :3].mean(1) * torch.tensor([1.0, 2.0, 3.0])).argmax(1)
train_loader = DataLoader(TensorDataset(feats[:960], labels[:960]), batch_size=32, shuffle=True)
val_x, val_y = feats[960:], labels[960:]


class ViS4mer(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 32)
        self.mix = nn.Conv1d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        h = torch.relu(self.proj(x)).transpose(1, 2)
        return self.head(torch.relu(self.mix(h)).mean(2))


model = ViS4mer()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=1, factor=0.2)  # PLATEAU
criterion = nn.CrossEntropyLoss()
for epoch in range(12):
    model.train()
    for x, y in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val_acc = (model(val_x).argmax(1) == val_y).float().mean().item()
    scheduler.step(val_acc)  # SCHED
"""


def _twins() -> dict[str, str]:
    return {
        "optimizer_other_instance": fixed_twin(
            OPTIMIZER_OTHER_INSTANCE,
            [("rnn = RNN(n_letters, n_hidden, n_categories)  # SECOND\n", "")],
        ),
        "zero_grad_before_step": fixed_twin(
            ZERO_GRAD_BEFORE_STEP,
            [
                (
                    "        pred = model(x[i:i + 32])\n",
                    "        optimizer.zero_grad()\n        pred = model(x[i:i + 32])\n",
                ),
                ("        optimizer.zero_grad()  # ZERO\n", ""),
            ],
        ),
        "no_grad_in_forward": fixed_twin(
            NO_GRAD_IN_FORWARD,
            [
                (
                    "        with torch.no_grad():  # NOGRAD\n            return self.refine(enc)",
                    "        return self.refine(enc)  # NOGRAD",
                )
            ],
        ),
        "frozen_backbone_train_mode": fixed_twin(
            FROZEN_BACKBONE_TRAIN_MODE,
            [
                (
                    "model.train()  # TRAIN\n",
                    "model.train()  # TRAIN\nmodel.backbone.eval()  # keep its statistics\n",
                )
            ],
        ),
        "hf_schedule_per_epoch": fixed_twin(
            HF_SCHEDULE_PER_EPOCH,
            [
                (
                    '"lr_scheduler": sched}',
                    '"lr_scheduler": {"scheduler": sched, "interval": "step"}}',
                )
            ],
        ),
        "warmup_per_epoch": fixed_twin(
            WARMUP_PER_EPOCH,
            [
                (
                    "        optimizer.step()\n    scheduler.step()",
                    "        optimizer.step()\n        scheduler.step()",
                )
            ],
        ),
        "plateau_max_on_loss": fixed_twin(
            PLATEAU_MAX_ON_LOSS, [("'max', patience=2", "'min', patience=2")]
        ),
        "plateau_min_on_accuracy": fixed_twin(
            PLATEAU_MIN_ON_ACCURACY,
            [("patience=1, factor=0.2)", "mode='max', patience=1, factor=0.2)")],
        ),
    }


BUGGY = {
    "optimizer_other_instance": OPTIMIZER_OTHER_INSTANCE,
    "zero_grad_before_step": ZERO_GRAD_BEFORE_STEP,
    "no_grad_in_forward": NO_GRAD_IN_FORWARD,
    "frozen_backbone_train_mode": FROZEN_BACKBONE_TRAIN_MODE,
    "hf_schedule_per_epoch": HF_SCHEDULE_PER_EPOCH,
    "warmup_per_epoch": WARMUP_PER_EPOCH,
    "plateau_max_on_loss": PLATEAU_MAX_ON_LOSS,
    "plateau_min_on_accuracy": PLATEAU_MIN_ON_ACCURACY,
}
HEALTHY = {f"{name}_fixed": text for name, text in _twins().items()}


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_optimizer_built_over_another_instance_of_the_model(runs):
    r = runs["optimizer_other_instance"]
    assert r.rc == 0, r
    f = top3(r, "TD111")
    assert f["where"]["source"] == script_line(r, "# OPT")
    assert "after the optimizer was built" in f["cause"]
    assert "never sees the new ones" in top3(r, "TD103")["cause"]


def test_zero_grad_between_backward_and_step(runs):
    r = runs["zero_grad_before_step"]
    assert r.rc == 0, r
    f = top3(r, "TD102")
    assert "between backward() and step()" in f["cause"]
    assert f["where"]["module"] == "layers"


def test_no_grad_inside_a_helper_of_the_training_forward(runs):
    r = runs["no_grad_in_forward"]
    assert r.rc == 0, r
    f = top3(r, "TD102")
    assert f["where"]["module"] == "refine"
    assert "torch.no_grad()" in f["cause"]


def test_frozen_backbone_left_in_train_mode(runs):
    r = runs["frozen_backbone_train_mode"]
    assert r.rc == 0, r
    f = top3(r, "TD516")
    assert f["where"]["module"] == "backbone"
    assert "running mean/var changed" in f["cause"]


def test_step_sized_warmup_stepped_once_an_epoch_by_lightning(runs):
    r = runs["hf_schedule_per_epoch"]
    assert r.rc == 0, r
    f = top3(r, "TD108")
    assert "exactly 0 at 32 of the 96 optimizer steps" in f["cause"]
    assert "interval='step'" in f["fix"]


def test_plateau_in_mode_max_stepped_with_a_validation_loss(runs):
    r = runs["plateau_max_on_loss"]
    assert r.rc == 0, r
    f = top3(r, "TD517")
    assert f["where"]["source"] == script_line(r, "# SCHED")
    assert "lowest so far" in f["cause"] and "mode='min'" in f["fix"]


def test_plateau_in_mode_min_stepped_with_a_validation_accuracy_is_info(runs):
    r = runs["plateau_min_on_accuracy"]
    assert r.rc == 0, r
    f = r.finding("TD517")
    assert f["severity"] == "info" and "mode='max'" in f["fix"]


def test_step_sized_warmup_stepped_once_an_epoch_in_a_plain_loop(runs):
    r = runs["warmup_per_epoch"]
    assert r.rc == 0, r
    f = top3(r, "TD108")
    assert "exactly 0" in f["cause"], f
    assert f["where"]["source"] == script_line(r, "# SCHED")

"""Real reports of a warmup sized in optimizer steps but stepped once an epoch in a plain loop
(third batch). Each is written as the reporter's code (made runnable on small synthetic data)
and run unchanged under the zero-code `traindoctor run`, beside the fixed twin (the scheduler
stepped per batch), which must stay silent (no error, no warning).

Measured at 8ef835d (before) and after this change (`traindoctor run`, 100 optimizer steps
each; load average 6-14 on 2 cores, which changes no verdict):
- rpryzant/causal-bert-pytorch#9, HF get_linear_schedule_with_warmup (10% of 100 batches)
  stepped in the epoch loop: lr exactly 0 for the first 25 steps, then 2e-4, 4e-4, 6e-4 of
  2e-3; the loss fell 1.40 -> 1.31 (-6.3%). Before: missed (TD502 only: TD108 judges a loss
  that did not fall 5%, TD503 zeros over most of the run). After: TD108 warning, "the learning
  rate was exactly 0 at 25 of the 100 optimizer steps", the cause naming the zero-lr stretch
  and "scheduler.step() ran at 4 of the 100 optimizer steps", at the scheduler.step() line.
- ildoonet/pytorch-gradual-warmup-lr#22 style, a LambdaLR warmup over 2 epochs of batches
  stepped per epoch (SGD, CNN): lr 0 for 20 of 100 steps, then 1/40..3/40 of its value; the
  loss fell 1.48 -> 1.28 (-13.6%). Before: missed. After: TD108 warning, same cause, 20 of 100.
Both fixed twins (scheduler.step() per batch) are silent before and after. (The LambdaLR
twin at lr=0.05 had a TD206 at step 60, a real gradient jump of SGD+momentum at that lr; the
script uses lr=0.02, where twin and bug are otherwise the same program.)
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, reported_batch, script_line, top3

pytestmark = pytest.mark.slow


# rpryzant/causal-bert-pytorch#9 ("scheduler.step() should be called after each epoch instead
# of after each batch iteration", answered: get_linear_schedule_with_warmup "should be applied
# at every step"): the proposed change, HF's linear warmup sized in batches stepped per epoch.
HF_WARMUP_PER_EPOCH = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps):
    # transformers.get_linear_schedule_with_warmup, written out: importing transformers takes
    # tens of seconds on a loaded machine, and the schedule is all the report needs of it.
    def lr_lambda(current_step):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        return max(0.0, float(num_training_steps - current_step)
                   / float(max(1, num_training_steps - num_warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


torch.manual_seed(0)
x = torch.randn(800, 32)
w = torch.randn(32, 4)
y = (x @ w).argmax(1)
dataloader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


class CausalBertHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.classifier = nn.Linear(64, 4)

    def forward(self, x):
        return self.classifier(self.encoder(x))


model = CausalBertHead()
epochs = 4
learning_rate = 2e-3
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, eps=1e-8)
total_steps = len(dataloader) * epochs
scheduler = get_linear_schedule_with_warmup(
    optimizer, num_warmup_steps=0.1 * total_steps, num_training_steps=total_steps
)
losses = []
for epoch in range(epochs):
    for step, (inputs, labels) in enumerate(dataloader):
        model.zero_grad()
        loss = nn.CrossEntropyLoss()(model(inputs), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().cpu().item())
    scheduler.step()  # <-- moved here
    print(epoch, sum(losses[-len(dataloader):]) / len(dataloader))
"""

# ildoonet/pytorch-gradual-warmup-lr#22 ("scheduler.step is called after each batch or
# epoch?"): a warmup written as a LambdaLR over `warmup_steps` batches, stepped where an epoch
# scheduler goes, with SGD and a small CNN.
LAMBDA_WARMUP_PER_EPOCH = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
images = torch.randn(640, 1, 12, 12)
labels = (images.mean(dim=(1, 2, 3)) > 0).long() + 2 * (images[:, 0, :6].mean(dim=(1, 2)) > 0).long()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 3 * 3, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


net = Net()
optimizer = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
batch_size = 32
iters = len(images) // batch_size
warmup_steps = 2 * iters
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, step / warmup_steps))
for epoch in range(5):
    perm = torch.randperm(len(images))
    for idx in range(iters):
        batch = perm[idx * batch_size:(idx + 1) * batch_size]
        optimizer.zero_grad()
        loss = F.cross_entropy(net(images[batch]), labels[batch])
        loss.backward()
        optimizer.step()
    scheduler.step()
    print(epoch, loss.item(), scheduler.get_last_lr())
"""


BUGGY = {
    "hf_warmup_per_epoch": HF_WARMUP_PER_EPOCH,
    "lambda_warmup_per_epoch": LAMBDA_WARMUP_PER_EPOCH,
}
HEALTHY = {
    "hf_warmup_per_epoch_fixed": fixed_twin(
        HF_WARMUP_PER_EPOCH,
        [
            (
                "        losses.append(loss.detach().cpu().item())\n    scheduler.step()  # <-- moved here\n",
                "        scheduler.step()\n        losses.append(loss.detach().cpu().item())\n",
            )
        ],
    ),
    "lambda_warmup_per_epoch_fixed": fixed_twin(
        LAMBDA_WARMUP_PER_EPOCH,
        [
            (
                "        optimizer.step()\n    scheduler.step()\n",
                "        optimizer.step()\n        scheduler.step()\n",
            )
        ],
    ),
}


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


@pytest.mark.parametrize(
    ("name", "zeros"), [("hf_warmup_per_epoch", 25), ("lambda_warmup_per_epoch", 20)]
)
def test_step_sized_warmup_stepped_once_an_epoch_in_a_plain_loop(runs, name, zeros):
    r = runs[name]
    assert r.rc == 0, r
    f = top3(r, "TD108")
    assert f["title"].startswith(f"the learning rate was exactly 0 at {zeros} of the 100")
    assert "scheduler.step() ran at" in f["cause"]
    assert f["where"]["source"] == script_line(r, "    scheduler.step()")
    assert f["evidence"]["zero_lr_steps"]["first"] == 1

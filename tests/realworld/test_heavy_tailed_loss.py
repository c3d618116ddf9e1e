"""TD210 on heavy-tailed per-batch losses, and on a summed loss divided by a count of its own.

1. A small BatchNorm CNN trained from scratch on batches of 16 (a class template per class, a
   random shift, 1.5% of the labels wrong, as in a real set) fits its data to ~0.01 per batch;
   a batch that holds a wrong label then costs 0.5 to 1, 25x the median of the steps before,
   and the next batch is back at ~0.01. pytorch/vision's classification reference (resnet18,
   batches of 16, RandomResizedCrop) swings the same way, 0.001 to 3.5. That is one batch far
   above the rest, not instability: TD210 says it at info, not as a warning. Its twin, whose lr
   is restarted at 50x for one step, loses its training for many steps: still a warning.
2. A causal LM whose loss is computed the way the Hugging Face Trainer computes it: the
   cross-entropy summed over the shifted labels (248 valid tokens), divided by
   num_items_in_batch, counted before the shift (256). At lr 1.0 the loss goes 3.6 -> 270 and
   ends at 10: a divergence, an error (it was info: the standard loss read 256x the backward
   loss, "mixed", not judged). At lr 1e-3 it is silent.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import run_all, td, write
from traindoctor.findings import Severity
from traindoctor.rules._objective import objective
from traindoctor.testing import assert_fires, make_timeline, run_rule
from traindoctor.timeline import TimelineView

BN_CNN = """
# A small BatchNorm CNN from scratch on batches of 16: 6 classes of 8x8 images (a class
# template, a random shift, noise), 1.5% of the labels wrong.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(4)
g = torch.Generator().manual_seed(5)
N, C, LR = 640, 6, 0.2
templates = torch.randn(C, 1, 8, 8, generator=g)
y = torch.randint(0, C, (N,), generator=g)
x = templates[y] + 0.3 * torch.randn(N, 1, 8, 8, generator=g)
wrong = torch.rand(N, generator=g) < 0.015
y[wrong] = (y[wrong] + 1 + torch.randint(0, C - 1, (int(wrong.sum()),), generator=g)) % C
model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, C),
)
opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
step = 0
for epoch in range(2):
    perm = torch.randperm(N, generator=g)
    for i in range(0, N, 16):
        idx = perm[i : i + 16]
        xb = torch.roll(x[idx], shifts=int(torch.randint(-1, 2, (1,), generator=g)), dims=3)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        step += 1
        opt.param_groups[0]["lr"] = LR  # RESTART
        opt.step()
"""
# A warm restart set far too high: one step at 50x the lr.
BN_CNN_RESTART = BN_CNN.replace(
    'opt.param_groups[0]["lr"] = LR  # RESTART',
    'opt.param_groups[0]["lr"] = LR * 50 if step == 50 else LR  # RESTART',
)

HF_CLM = """
# A causal LM with the Hugging Face Trainer's loss: labels = input_ids, shifted inside the loss,
# cross-entropy summed over the valid tokens and divided by num_items_in_batch, the count of
# valid labels taken before the shift (8 more than were summed).
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
V, T, B = 35, 32, 8
trans = torch.softmax(3 * torch.randn(V, V, generator=g), dim=1)  # a Markov chain over V tokens
seqs = torch.empty(320, T, dtype=torch.long)
seqs[:, 0] = torch.randint(0, V, (320,), generator=g)
for t in range(1, T):
    seqs[:, t] = torch.multinomial(trans[seqs[:, t - 1]], 1, generator=g).squeeze(1)


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 64)
        self.pos = nn.Embedding(T, 64)
        self.mlp = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
        self.ln = nn.LayerNorm(64)
        self.head = nn.Linear(64, V)

    def forward(self, ids):
        h = self.emb(ids) + self.pos(torch.arange(ids.shape[1]))
        h = h + self.mlp(h)
        return self.head(self.ln(h))


model = TinyLM()
steps = 2 * len(seqs) // B
opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
for epoch in range(2):
    perm = torch.randperm(len(seqs), generator=g)
    for i in range(0, len(seqs), B):
        input_ids = seqs[perm[i : i + B]]
        labels = input_ids.clone()
        # counted before the shift, then divided by the tensor-parallel size (1), as the
        # Trainer does: a float tensor, not a Python number
        num_items_in_batch = (labels != -100).sum() / 1
        logits = model(input_ids)
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1),
            ignore_index=-100, reduction="sum",
        ) / num_items_in_batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
"""

SCRIPTS = {
    "bn_cnn": BN_CNN,
    "bn_cnn_restart": BN_CNN_RESTART,
    "clm_ok": HF_CLM.replace("lr=LR", "lr=1e-3"),
    "clm_lr_high": HF_CLM.replace("lr=LR", "lr=1.0"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("heavy_tailed")
    jobs = {}
    for name, text in SCRIPTS.items():
        folder = base / name
        write(folder, "train.py", text)
        jobs[name] = lambda folder=folder: td(folder, "run", "train.py")
    return run_all(jobs)


def _loud(result):
    return [
        (f["code"], f["severity"], f["title"])
        for f in result.findings()["findings"]
        if f["severity"] in ("warning", "error")
    ]


def test_a_heavy_tailed_bn_net_is_clean(runs):
    result = runs["bn_cnn"]
    assert result.rc == 0, result
    assert _loud(result) == [], result
    # its largest per-batch loss after the fit is still said, as one batch above the rest
    spikes = [f for f in result.findings()["findings"] if f["code"] == "TD210"]
    assert all(f["severity"] == "info" for f in spikes), spikes


def test_a_restart_that_undoes_the_training_is_still_a_warning(runs):
    result = runs["bn_cnn_restart"]
    assert result.rc in (0, 3), result
    f = result.finding("TD210")
    assert f["severity"] in ("warning", "error"), f
    assert f["evidence"]["kind"] == "spike" and f["step"] == 51, f


def test_a_count_that_is_not_the_summed_targets_is_still_judged(runs):
    result = runs["clm_lr_high"]
    f = result.finding("TD210")
    assert f["severity"] == "error" and f["evidence"]["kind"] == "divergence", f
    assert "judged: supervised cross_entropy" in f["cause"], f


def test_a_healthy_summed_lm_loss_is_silent(runs):
    result = runs["clm_ok"]
    assert result.rc == 0, result
    assert _loud(result) == [], result


# -- hand-built timelines -----------------------------------------------------------------

CE = {
    "kind": "loss_input",
    "step": 1,
    "site": 0,
    "fn": "cross_entropy",
    "classes": 35,
    "input_shape": [248, 35],
    "target_float": False,
    "source": "run_clm.py:675",
}

# Per-step losses of pytorch/vision's classification reference under `traindoctor run`
# (resnet18 from scratch, batches of 16, 6 classes): fit to ~0.01, one batch at 3.47 at step 50.
# fmt: off
VISION = [
    1.854, 1.727, 1.775, 1.548, 1.611, 1.261, 1.204, 1.181, 0.687, 0.314, 0.357, 0.149, 0.155,
    0.58, 0.185, 0.111, 0.045, 0.036, 0.206, 0.013, 0.008, 0.088, 0.192, 0.293, 0.029, 0.014,
    0.006, 0.039, 0.061, 0.31, 0.195, 0.031, 0.001, 0.003, 0.008, 0.001, 0.003, 0.0, 0.414,
    0.807, 0.002, 0.0, 0.067, 0.022, 0.001, 0.094, 0.759, 0.291, 0.008, 3.469, 0.002, 0.001,
    0.39, 0.148,
]
# fmt: on


def _ce_timeline(backward, *, logged=None, sums=None, n_valid=248.0):
    """Backward losses per step; `logged` {step: value}; the CE call's summed loss per step."""
    steps = {}
    for i, v in enumerate(backward, 1):
        steps[i] = {"loss.backward": [v], "optim.lr": {"opt0/group0": 1.0}}
        steps[i]["loss_inputs.observed"] = [0]
        stats = {"0.t_min": 0.0, "0.t_max": 34.0}
        if sums is not None:
            stats.update({"0.loss": sums[i - 1], "0.n_valid": n_valid})
        steps[i]["loss_inputs.stats"] = stats
    for s, v in (logged or {}).items():
        steps[s]["loss.train"] = [v]
    return make_timeline(params=["head.weight"], steps=steps, events=[dict(CE)])


def test_a_measured_vision_spike_the_run_shrugs_off_is_info():
    tl = make_timeline(
        params=["fc.weight"],
        steps={
            i: {
                "loss.backward": [v],
                "optim.lr": {"opt0/group0": 0.02},
                "loss_inputs.observed": [0],
            }
            for i, v in enumerate(VISION, 1)
        },
        events=[dict(CE, classes=6, input_shape=[16, 6], source="train.py:42")],
    )
    f = assert_fires("TD210", tl)
    assert f.evidence["kind"] == "spike" and f.step == 50 and f.severity is Severity.INFO


def test_a_spike_within_the_recent_spread_is_none():
    # a loss of 3.0 after 10 steps of which 4 were at 2.2 to 2.6 (their median 0.05): within
    # the run's own spread, not a spike
    losses = [2.0 - 0.03 * i for i in range(30)]
    losses += [0.05, 2.6, 0.04, 2.4, 0.06, 2.5, 0.03, 0.05, 2.2, 0.05] * 2
    losses += [3.0] + [0.05, 0.04, 0.06] * 4
    found = [f for f in run_rule("TD210", _ce_timeline(losses)) if f.evidence["kind"] == "spike"]
    assert found == [], found


def test_a_sum_divided_by_a_slightly_different_count_is_the_standard_objective():
    # sum over 248 valid tokens, divided by 256 (counted before the shift)
    sums = [3.6 * 248 * 0.99**i for i in range(20)]
    obj = objective(TimelineView(_ce_timeline([s / 256 for s in sums], sums=sums)))
    assert obj.falls is True and obj.kind == "supervised", obj
    # a sum divided by a count far from it (a hand-written scale, 1000): not read as a mean
    obj = objective(TimelineView(_ce_timeline([s / 1000 for s in sums], sums=sums)))
    assert obj.falls is None and obj.kind == "mixed", obj
    # a sum not divided at all is the sum itself: standard too
    obj = objective(TimelineView(_ce_timeline(list(sums), sums=sums)))
    assert obj.falls is True, obj


def test_a_logged_window_mean_starts_from_the_loss_before_any_update():
    # lr far too high: 3.5 at step 1, 147 by step 6, back down to ~9; logged every 5 steps as
    # the mean of the steps since the last log (the Trainer's logging), so the first logged
    # value, 61, already holds the blow-up
    backward = [3.5, 28.0, 59.0, 93.0, 121.0, 147.0] + [90.0 * 0.95**i for i in range(34)]
    backward += [9.5, 9.0, 8.8, 9.2, 8.9, 9.0, 8.7, 9.1, 8.8, 9.0]
    logged = {s: sum(backward[s - 5 : s]) / 5 for s in range(5, len(backward) + 1, 5)}
    f = assert_fires("TD210", _ce_timeline(backward, logged=logged))
    assert f.evidence["kind"] == "divergence" and f.evidence["loss_before"] == 3.5, f
    assert f.severity is Severity.ERROR
    # logged on another scale than the backward losses (x100): the first backward loss is not
    # taken for the logged loss's start
    scaled = {s: 100 * v for s, v in logged.items()}
    found = run_rule("TD210", _ce_timeline(backward, logged=scaled))
    assert [f for f in found if f.evidence["kind"] == "divergence"] == [], found

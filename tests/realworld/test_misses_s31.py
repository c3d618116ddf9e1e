"""Misses from real reports (session 31), each written in the reporter's style beside the
healthy programs that must stay silent.

TD521, a clamp at 0 on the logits of a class loss:
- pytorch/tutorials#1526 (https://github.com/pytorch/tutorials/issues/1526, fixed by #1644):
  the Quickstart's `NeuralNetwork` ended its `nn.Sequential` with `nn.ReLU()` after the last
  Linear, fed to `nn.CrossEntropyLoss` (71.5% against 98.2% test accuracy on Fashion-MNIST).
- hunkim/PyTorchZeroToAll#4 ("Remove relu in the final layer"): `09_softmax_mnist.py` ran
  `F.relu(self.l5(x))`, then `F.log_softmax` and `F.nll_loss`.
- martinwicke/tf-dev-summit-tensorboard-tutorial#3: a ReLU kept on the logits of a small conv
  net ("accuracy could not overcome 65%", 99% without it); here a functional step with
  `clamp(min=0)` and Adam. Measured on a 784-512-512-10 MLP, synthetic 10 classes, Adam: 0.70
  and 0.79 accuracy against 1.00 (25-42% of the rows all 0 at the end); SGD 1e-2: 0.80/0.90
  against 1.00; softplus logits: 1.00 where training converged, slower where it had not
  (not reported).
Silent: the fixed twins, cross-entropy over log_softmax(logits), a SqueezeNet-style head
(ReLU, then a global average pool: non-negative logits no clamp made), softplus logits,
BCEWithLogits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td


def _data(seed: int, n: int = 512, d: int = 64, classes: int = 10, scale: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return protos[y] * scale + torch.randn(n, d, generator=g), y


def _watch(tmp_path, model, params, step, *, steps: int = 40, lr: float = 1e-3, adam=True):
    """`steps` training steps of `step(model, x, y) -> loss` under td.watch: the findings."""
    torch.manual_seed(0)
    x, y = _data(0)
    opt = torch.optim.Adam(params, lr=lr) if adam else torch.optim.SGD(params, lr=lr)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for i in range(steps):
            idx = torch.arange(i * 32, i * 32 + 32) % len(x)
            loss = step(model, x[idx], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {f.code: f for f in doc.report.findings}


class Quickstart(nn.Module):  # pytorch/tutorials#1526
    def __init__(self, relu_last: bool) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers = [nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)]
        self.linear_relu_stack = nn.Sequential(*layers, *([nn.ReLU()] if relu_last else []))

    def forward(self, x):
        return self.linear_relu_stack(self.flatten(x))


class ZeroToAll(nn.Module):  # hunkim/PyTorchZeroToAll#4
    def __init__(self, relu_last: bool) -> None:
        super().__init__()
        self.relu_last = relu_last
        self.l1, self.l2, self.l5 = nn.Linear(64, 120), nn.Linear(120, 60), nn.Linear(60, 10)

    def forward(self, x):
        x = F.relu(self.l2(F.relu(self.l1(x.view(-1, 64)))))
        x = F.relu(self.l5(x)) if self.relu_last else self.l5(x)
        return F.log_softmax(x, dim=1)


def _summit(head):  # martinwicke/tf-dev-summit-tensorboard-tutorial#3, functional
    torch.manual_seed(0)
    w = {
        "f1": (torch.randn(64, 64) * 0.1).requires_grad_(),
        "b1": torch.zeros(64, requires_grad=True),
        "f2": (torch.randn(64, 10) * 0.1).requires_grad_(),
        "b2": torch.zeros(10, requires_grad=True),
    }
    holder = nn.Module()
    for k, v in w.items():
        holder.register_parameter(k, nn.Parameter(v.detach().clone()))

    def step(m, x, y):
        h = F.relu(x @ m.f1 + m.b1)
        return F.cross_entropy(head(h @ m.f2 + m.b2), y)

    return holder, step


def _ce(m, x, y):
    return nn.CrossEntropyLoss()(m(x), y)


def _nll(m, x, y):
    return F.nll_loss(m(x), y)


@pytest.mark.parametrize(
    "case", ["quickstart_relu", "zerotoall_relu", "summit_clamp", "summit_relu6"]
)
def test_logits_clamped_at_zero_fire(tmp_path, case):
    if case == "quickstart_relu":
        model = Quickstart(True)
        found = _watch(tmp_path, model, model.parameters(), _ce)
        module = "linear_relu_stack.2"
    elif case == "zerotoall_relu":
        model = ZeroToAll(True)
        found = _watch(tmp_path, model, model.parameters(), _nll, adam=False, lr=0.01)
        module = "l5"
    else:
        head = (lambda z: z.clamp(min=0)) if case == "summit_clamp" else F.relu6
        model, step = _summit(head)
        found = _watch(tmp_path, model, model.parameters(), step)
        module = "f2"  # a parameter of the root module, named as the module
    f = found.get("TD521")
    assert f is not None, sorted(found)
    assert f.where.module == module
    assert "exactly 0" in f.title and f.evidence["zero_logit_share"]
    assert f.severity.value in ("warning", "error")


def test_rows_all_zero_make_it_an_error(tmp_path):
    # Adam at 1e-2 drives whole rows of clamped logits to 0: examples that train nothing.
    model, step = _summit(lambda z: z.clamp(min=0))
    f = _watch(tmp_path, model, model.parameters(), step, lr=1e-2)["TD521"]
    assert f.severity.value == "error"
    assert max(f.evidence["all_zero_row_share"].values()) > 0


class Squeeze(nn.Module):
    """SqueezeNet's head: a 1x1 conv to the classes, ReLU, then a global average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(16, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x.view(-1, 1, 8, 8))), 1)


class LogSoftmaxCE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return F.log_softmax(self.net(x), dim=1)  # CE re-normalises: legal


class Multilabel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize(
    "case",
    ["quickstart", "zerotoall", "summit", "summit_softplus", "squeeze", "log_softmax_ce", "bce"],
)
def test_logits_clamped_at_zero_silent(tmp_path, case):
    if case in ("summit", "summit_softplus"):
        model, step = _summit(F.softplus if case == "summit_softplus" else (lambda z: z))
        found = _watch(tmp_path, model, model.parameters(), step)
    elif case == "zerotoall":
        model = ZeroToAll(False)
        found = _watch(tmp_path, model, model.parameters(), _nll, adam=False, lr=0.01)
    elif case == "bce":
        model = Multilabel()

        def step(m, x, y):
            return F.binary_cross_entropy_with_logits(m(x), F.one_hot(y, 10).float())

        found = _watch(tmp_path, model, model.parameters(), step)
    else:
        model = {"quickstart": Quickstart(False), "squeeze": Squeeze()}.get(case) or LogSoftmaxCE()
        found = _watch(tmp_path, model, model.parameters(), _ce)
    assert "TD521" not in found
    assert not [c for c, f in found.items() if f.severity.value != "info"], found


# -- TD511: class targets out of range, before the first step ---------------------------------
# VainF/DeepLabV3Plus-Pytorch#91: VOC masks carry 255 on the void borders; the loss was built
# without ignore_index=255 and the first call raised "Target 255 is out of bounds" (on CUDA: a
# device-side assert). Before: under `traindoctor run` nothing was recorded (the first backward
# attaches, the loss raised before it). After: TD511 counts them before the loss runs.
VOC = """import torch, torch.nn as nn
torch.manual_seed(0)
class DeepLabHead(nn.Sequential):
    def __init__(self, in_channels, num_classes):
        super().__init__(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                         nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.Conv2d(16, num_classes, 1))
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), DeepLabHead(8, 21))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
criterion = nn.CrossEntropyLoss(reduction='mean')
for cur_itrs in range(4):
    images = torch.randn(2, 3, 24, 24)
    labels = torch.randint(0, 21, (2, 24, 24))
    labels[:, :, :3] = 255  # void border of the VOC masks
    optimizer.zero_grad()
    outputs = model(images)
    loss = criterion(outputs, labels)
    loss.backward()
    optimizer.step()
"""


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    from tests.cli.conftest import run_scripts

    return run_scripts(tmp_path_factory, {"voc": VOC})["voc"]


@pytest.mark.slow
def test_void_label_255_named_before_the_first_step(voc_run):
    r = voc_run
    assert r.rc == 1
    # The user's traceback as python prints it: torch's frames, none of traindoctor's.
    tb = r.stderr.split("IndexError: Target 255 is out of bounds.\n")[0]
    assert tb.startswith("Traceback") and 'train.py", line 16' in tb
    assert "traindoctor/" not in tb and "functional.py" in tb
    f = r.finding("TD511")
    assert f["severity"] == "error" and f["evidence"]["values"] == [[255, 144]]
    assert f["evidence"]["classes"] == 21 and f["where"]["source"] == "train.py:16"
    assert "ignore_index=255" in f["fix"] and "IndexError" in f["title"]


def test_void_label_255_ignored_is_silent(tmp_path):
    # The thread's fix, ignore_index=255: the same masks train.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 21, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss(ignore_index=255, reduction="mean")
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(4):
            labels = torch.randint(0, 21, (2, 24, 24))
            labels[:, :, :3] = 255
            loss = criterion(model(torch.randn(2, 3, 24, 24)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert not [f.code for f in doc.report.findings if f.severity.value != "info"]


def _crash(tmp_path, labels, classes):
    """A td.watch run whose first loss raises; the exception must reach the caller as is."""
    torch.manual_seed(0)
    model = nn.Linear(8, classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    with pytest.raises(IndexError, match="out of bounds") as info, doc:
        loss = F.cross_entropy(model(torch.randn(len(labels), 8)), labels)
        loss.backward()
    assert info.value.__class__ is IndexError and str(info.value).startswith("Target ")
    return doc.report.findings


def test_greyscale_masks_read_as_pixel_values(tmp_path):
    # milesial/Pytorch-UNet#291: masks loaded as greyscale 0..255, n_classes=2.
    labels = torch.tensor([0, 255, 128, 192, 0, 255, 64, 1])
    (f,) = [f for f in _crash(tmp_path, labels, 2) if f.code == "TD511"]
    assert f.evidence["out_of_range"] == 5 and f.evidence["label_max"] == 255
    assert "raw 8-bit pixel values" in f.fix


def test_one_based_labels(tmp_path):
    # 649453932/Bert-Chinese-Text-Classification-Pytorch#96: 13 classes labelled 1..13.
    labels = torch.tensor([1, 13, 5, 13, 2, 7, 13, 12])
    (f,) = [f for f in _crash(tmp_path, labels, 13) if f.code == "TD511"]
    assert f.evidence["values"] == [[13, 3]] and "y - 1" in f.fix


# -- TD506 (note): kl_div given probabilities ------------------------------------------------
# microsoft/ProDA#43 and #20: the self-distillation term `F.kl_div(F.softmax(student), teacher,
# reduction='none')`, masked and averaged, added to the segmentation loss. Measured (5 classes,
# soft teacher): the loss fell to -1.68, the student's confidence 0.98 against the teacher's
# 0.56, true KL 5.45 against 0.0002 with log_softmax, the same argmax agreement (0.99): a note.
class Seg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1))

    def forward(self, x):
        return {"out": self.net(x)}


@pytest.mark.parametrize("case", ["proda", "log_softmax", "log_target"])
def test_kl_div_given_probabilities(tmp_path, case):
    torch.manual_seed(0)
    model, teacher_DP = Seg(), Seg()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(6):
            target_imageS = torch.randn(2, 3, 8, 8)
            labels = torch.randint(0, 5, (2, 8, 8))
            target_out = model(target_imageS)
            loss = F.cross_entropy(target_out["out"], labels)
            with torch.no_grad():
                teacher_out = teacher_DP(target_imageS)
            if case == "proda":
                student = F.softmax(target_out["out"], dim=1)
                teacher = F.softmax(teacher_out["out"], dim=1)
                loss_kd = F.kl_div(student, teacher, reduction="none")
            elif case == "log_softmax":
                student = F.log_softmax(target_out["out"], dim=1)
                teacher = F.softmax(teacher_out["out"], dim=1)
                loss_kd = F.kl_div(student, teacher, reduction="none")
            else:
                student = F.log_softmax(target_out["out"], dim=1)
                teacher = F.log_softmax(teacher_out["out"], dim=1)
                loss_kd = F.kl_div(student, teacher, reduction="none", log_target=True)
            mask = (labels != 250).float().unsqueeze(1)
            loss = loss + 0.1 * (loss_kd * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    kl = [f for f in doc.report.findings if f.code == "TD506" and f.evidence["loss_fn"] == "kl_div"]
    if case == "proda":
        assert len(kl) == 1 and kl[0].severity.value == "info"
        assert "SoftmaxBackward0" in kl[0].title and "log_softmax" in kl[0].fix
    else:
        assert kl == []
    assert not [f.code for f in doc.report.findings if f.severity.value != "info"]

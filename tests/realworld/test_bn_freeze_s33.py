"""TD402 on a BatchNorm freeze made midway, the model still training.

PyTorch's quantization-aware training recipe (the "Quantization Aware Training" section of
the quantization docs, and torchvision's `references/classification/train_quantization.py`)
calls `model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)` after a few epochs: it sets
`bn.training = False` on purpose. Detection and segmentation fine-tuning scripts do the same by
hand (`for m in model.modules(): if isinstance(m, nn.BatchNorm2d): m.eval()`). Before: TD402
error, "optimizer steps taken with BatchNorm modules in eval mode" (the rule's docstring listed
it as a known false positive). Now an info that says the freeze was made on the norm layers
themselves while the model and its Dropout stay in train mode. Twin: a validation's
`model.eval()` left behind stays the error.
"""

from __future__ import annotations

import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from torch import nn

from tests._loop import watch


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv, self.bn, self.relu = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
        self.drop, self.fc = nn.Dropout(0.2), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(self.quant(x))))
        return self.dequant(self.fc(self.drop(x.flatten(1))))


def _run(tmp_path, freeze, qat=False, steps=16):
    torch.manual_seed(0)
    model = _Net().train()
    if qat:
        model.qconfig = tq.get_default_qat_qconfig("fbgemm")
        model = tq.prepare_qat(tq.fuse_modules_qat(model, [["conv", "bn", "relu"]]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, opt, tmp_path)
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        if i == 8:
            freeze(model)
        x = torch.randn(8, 1, 8, 8, generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), (x.mean((1, 2, 3)) > 0).long()).backward()
        opt.step()
    doc.close()
    _run.findings = doc.findings
    return [f for f in doc.findings if f.code == "TD402"]


def _bn_eval(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def test_qat_freeze_bn_stats_is_an_info(tmp_path):
    (f,) = _run(tmp_path, lambda m: m.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats), qat=True)
    assert f.severity.value == "info" and "frozen" in f.title
    # The fused ConvBnReLU2d adds the conv's own bias right before its BatchNorm: cancelled
    # (TD104 says so, as a note), not an update "below the float resolution" to raise the lr for.
    for f in _run.findings:
        if f.code == "TD104":
            assert f.severity.value == "info" and "conv.bias" in f.evidence["normalized_by"]


def test_batchnorm_layers_put_in_eval_by_hand_midway_is_an_info(tmp_path):
    (f,) = _run(tmp_path, _bn_eval)
    assert f.severity.value == "info" and "bn" in f.evidence["modules_in_eval"]


def test_a_validation_eval_left_behind_stays_an_error(tmp_path):
    (f,) = _run(tmp_path, lambda m: m.eval())
    assert f.severity.value == "error"

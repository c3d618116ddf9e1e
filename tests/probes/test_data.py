"""DataProbe: batch fingerprints against brute force, first layer found after the model's own
normalization, validation never fingerprinted, bit-identical training, hooks removed."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.probes.data import MAX_SAMPLES


class Net(nn.Module):
    """Scales its input itself (x / 255) before the first layer, like a model with a built-in
    preprocessing step: the first layer sees the scaled tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(12, 16)
        self.act = nn.Tanh()
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.head(self.act(self.fc1(self.flat(x) * scale)))


def _data(steps: int):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.rand(8, 3, 4, generator=g) * 255, torch.randint(0, 3, (8,), generator=g))
        for _ in range(steps)
    ]


def _train(watch: bool, tmp_path=None, steps: int = 8, scale: float = 1.0):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False) if watch else None
    data = _data(steps)
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x, scale=scale), y).backward()
        opt.step()
        with torch.no_grad():  # a validation forward on other data: never fingerprinted
            model(torch.zeros(8, 3, 4))
    return model, doc, data


def test_fingerprints_match_brute_force(tmp_path):
    _, doc, data = _train(True, tmp_path)
    doc.close()
    fps = dict(doc.timeline.series("data.fp"))
    assert sorted(fps) == list(range(1, len(data) + 1))
    for step, (x, _) in enumerate(data, 1):
        fp = fps[step]
        assert abs(fp["in0.sum"] - x.double().sum().item()) <= 1e-5 * x.double().sum().item()
        assert abs(fp["in0.sumsq"] - (x.double() ** 2).sum().item()) <= 1e-4 * fp["in0.sumsq"]
        assert fp["in0.min"] == x.min().item() and fp["in0.max"] == x.max().item()
    samples = dict(doc.timeline.series("data.samples"))
    assert all(len(v) == min(MAX_SAMPLES, 8) for v in samples.values())
    assert doc.timeline.series("data.inputs")[0][1]["in0"] == {
        "dtype": "float32",
        "shape": [8, 3, 4],
        "float": True,
    }


def test_sample_fingerprint_is_position_independent(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    x = torch.rand(8, 3, 4) * 255
    for batch in (x, x.flip(0)):
        opt.zero_grad()
        model(batch).sum().backward()
        opt.step()
    doc.close()
    s = dict(doc.timeline.series("data.samples"))
    assert s[2] == s[1][::-1]


def test_first_layer_sees_the_models_own_scaling(tmp_path):
    _, doc, _ = _train(True, tmp_path, steps=4, scale=1 / 255)
    doc.close()
    first = doc.timeline.series("data.first_layer")
    assert first and first[0][1]["module"] == "fc1"
    assert first[0][1]["next"][0] == "Tanh"
    stats = dict(doc.timeline.series("data.first_stats"))[first[0][0]]
    assert 0.3 < stats["in_mean"] < 0.7  # (0..255) / 255, measured after the model's scaling
    assert stats["in_max"] <= 1.0
    assert not any(f.code == "TD510" for f in doc.report.findings)


def test_training_is_bit_identical_and_hooks_are_removed(tmp_path):
    plain, _, _ = _train(False)
    watched, doc, _ = _train(True, tmp_path)
    doc.close()
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    for m in watched.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_integer_inputs_are_described_as_not_float(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(24, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for _ in range(3):
        ids = torch.randint(0, 50, (4, 3))
        opt.zero_grad()
        model(ids).sum().backward()
        opt.step()
    doc.close()
    assert doc.timeline.series("data.inputs")[0][1]["in0"]["float"] is False
    assert doc.timeline.series("data.first_layer")[0][1]["type"] == "Embedding"
    assert not doc.timeline.series("data.first_stats")  # indices: no scale measured

"""Loss-inputs probe: the wrapped losses return torch's result, are removed on close, leave the
training bit-identical, and record what was measured (oracle: computed here by hand)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.probes.loss_inputs import loss_patched


def _train(doc_fn, steps=5, probs=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = doc_fn(model, opt)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        loss = nn.CrossEntropyLoss()(out.softmax(1) if probs else out, y)
        loss.backward()
        opt.step()
    return model, doc, x, y


def test_patches_are_removed_and_results_unchanged(tmp_path):
    originals = {n: getattr(F, n) for n in ("nll_loss", "mse_loss", "kl_div")}
    ce_kernel = torch._C._nn.cross_entropy_loss
    model, doc, x, y = _train(lambda m, o: td.watch(m, o, out_dir=tmp_path, console=False))
    assert loss_patched()
    a, b = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert torch._C._nn.cross_entropy_loss is not ce_kernel
    assert torch.equal(F.cross_entropy(a, b), ce_kernel(a, b, None, 1, -100, 0.0))
    assert torch.equal(F.mse_loss(a, a * 2), originals["mse_loss"](a, a * 2))
    doc.close()
    assert not loss_patched()
    assert torch._C._nn.cross_entropy_loss is ce_kernel
    for n, fn in originals.items():
        assert getattr(F, n) is fn
    assert not doc.report.internal_errors


def test_training_is_bit_identical(tmp_path):
    plain, _, _, _ = _train(lambda m, o: None, steps=6)
    watched, doc, _, _ = _train(
        lambda m, o: td.watch(m, o, out_dir=tmp_path, console=False), steps=6
    )
    doc.close()
    for p, q in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(p, q)


def test_records_measured_facts(tmp_path):
    model, doc, x, y = _train(
        lambda m, o: td.watch(m, o, out_dir=tmp_path, console=False), steps=3, probs=True
    )
    doc.close()
    tl = doc.timeline
    (event,) = tl.events("loss_input")
    assert event["fn"] == "cross_entropy" and event["classes"] == 3
    assert event["producer"][0] == "SoftmaxBackward0" and event["softmax_dim_size"] == 3
    assert "test_loss_inputs.py:" in event["source"]
    stats = dict(tl.series("loss_inputs.stats"))[1]
    assert stats["0.in_min"] >= 0 and stats["0.in_max"] <= 1
    assert stats["0.rowsum_dev"] < 1e-5
    assert (stats["0.t_min"], stats["0.t_max"]) == (float(y.min()), float(y.max()))
    hist = dict(tl.series("loss_inputs.labels"))[2]
    assert [hist[f"0.{c}"] for c in range(3)] == torch.bincount(y, minlength=3).tolist()


def test_losses_on_detached_values_are_ignored(tmp_path):
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(3):
            opt.zero_grad()
            pred = model(torch.randn(8, 4))
            F.mse_loss(pred.detach(), torch.zeros(8))  # a logged metric with a broadcast
            F.mse_loss(pred, torch.zeros(8, 1)).backward()
            opt.step()
    assert all(not e.get("broadcast_shape") for e in doc.timeline.events("loss_input"))

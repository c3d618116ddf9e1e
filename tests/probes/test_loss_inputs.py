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


# -- layout: where the head's features / the softmax's dim end up (host metadata only) ------
def _gru_linear(batch_first_contiguous: bool):
    torch.manual_seed(0)
    rnn, head = nn.GRU(6, 8, batch_first=True), nn.Linear(8, 5)
    h, _ = rnn(torch.randn(4, 7, 6))  # (B, T, H), not contiguous: linear = mm + bias add
    if batch_first_contiguous:
        h = h.contiguous()  # linear = addmm on a view
    return head, head(h)  # (4, 7, 5)


def test_layout_follows_the_linear_features_through_views_and_transposes():
    from traindoctor.probes.loss_inputs import layout

    for contiguous in (True, False):
        head, logits = _gru_linear(contiguous)
        names = {id(p): f"model.head.{n}" for n, p in head.named_parameters()}
        lay = layout(logits, names)
        assert lay["head_features"] == 5 and lay["head_dim"] == 2, lay
        assert lay["head_module"] == "model.head"
        assert layout(logits.transpose(1, 2))["head_dim"] == 1
        assert layout(logits.permute(0, 2, 1))["head_dim"] == 1
        assert layout(logits.reshape(-1, 5))["head_dim"] == 1
        assert layout(logits[:, :-1].contiguous().view(-1, 5))["head_dim"] == 1
        scrambled = layout(logits.reshape(4, 5, 7))
        assert scrambled["head_dim"] is None
        assert not contiguous or "view_reordered" not in scrambled  # a view of a view
    _, logits = _gru_linear(False)
    assert layout(logits.reshape(4, 5, 7))["view_reordered"] == [[4, 7, 5], [4, 5, 7]]


def test_layout_of_conv_and_softmax_heads():
    from traindoctor.probes.loss_inputs import layout

    conv = nn.Conv2d(3, 4, 3, padding=1)
    out = conv(torch.randn(2, 3, 6, 6))  # (B, C, H, W)
    assert layout(out)["head_dim"] == 1 and layout(out)["head_features"] == 4
    assert layout(out.permute(0, 2, 3, 1))["head_dim"] == 3
    assert layout(out.permute(0, 2, 3, 1).reshape(-1, 4))["head_dim"] == 1
    x = torch.randn(3, 5, 4, requires_grad=True)
    for dim in (0, 1, 2, -1):
        lay = layout(F.log_softmax(x, dim=dim))
        assert lay["softmax_dim"] == dim % 3 and lay["head_dim"] == dim % 3
    assert layout(F.softmax(x, dim=2).transpose(1, 2))["head_dim"] == 1
    # a Linear on one vector per sample: (B, C), nothing to confuse
    lin = nn.Linear(4, 3)
    assert layout(lin(torch.randn(8, 4)))["head_dim"] == 1


def test_normalization_is_measured_per_dim_like_brute_force():
    from traindoctor.probes.loss_inputs import _normalization

    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, requires_grad=True)
    for dim in range(3):
        logp = F.log_softmax(x, dim=dim)
        got = _normalization(
            "nll_loss", logp, torch.zeros(6, 3).long(), ["LogSoftmaxBackward0"], {}
        )
        for d in range(3):
            want = logp.detach().logsumexp(d).abs().max()
            assert torch.allclose(got[f"lnorm{d}"], want)
        assert got[f"lnorm{dim}"] < 1e-5 and all(got[f"lnorm{d}"] > 0.1 for d in {0, 1, 2} - {dim})
    p = F.softmax(x[:, :, 0], dim=0)
    target = F.softmax(torch.randn(6, 4), dim=1)
    got = _normalization("mse_loss", p, target, ["SoftmaxBackward0"], {})
    assert got["pnorm0"] < 1e-5 and got["pnorm1"] > 0.1
    assert got["tnorm1"] < 1e-5 and got["tnorm0"] > 0.1
    # logits into cross_entropy: not a distribution, nothing measured
    assert (
        _normalization("cross_entropy", x[:, :, 0], torch.zeros(6).long(), ["AddmmBackward0"], {})
        == {}
    )


def test_normalization_is_sampled_on_the_1st_2nd_4th_8th_call(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        doc.budget.adaptive = False
        doc.budget.interval = 1  # every step observed
        for _ in range(10):
            opt.zero_grad()
            F.nll_loss(F.log_softmax(model(x), dim=1), y).backward()
            opt.step()
    measured = [s for s, v in doc.timeline.series("loss_inputs.stats") if "0.lnorm0" in v]
    assert measured == [1, 2, 4, 8]
    assert all(
        v["0.lnorm1"] < 1e-5 < v["0.lnorm0"]
        for _, v in doc.timeline.series("loss_inputs.stats")
        if "0.lnorm0" in v
    )


def test_summed_class_losses_record_how_many_labels_count(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(12, 6)
    y = torch.tensor([0, 1, 2, -100, 1, 1, -100, 0, 2, 2, 1, 0])
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        opt.zero_grad()
        summed = F.cross_entropy(model(x), y, reduction="sum")  # site 0
        mean = F.nll_loss(F.log_softmax(model(x), 1), y.clamp(min=0))  # site 1: mean
        (summed / (y != -100).sum() + mean).backward()
        opt.step()
    stats = dict(doc.timeline.series("loss_inputs.stats"))[1]
    assert stats["0.n_valid"] == float((y != -100).sum())
    assert "1.n_valid" not in stats

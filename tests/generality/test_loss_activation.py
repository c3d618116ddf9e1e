"""Generality of the loss/activation-mismatch rules (TD506-TD509): each bug planted on a model
shape the scenarios do not use (a CNN on images, a conv segmenter, a GRU with a dict output, a
transformer encoder; 5-7 classes, batches of 12-24), beside its healthy twin, judged through
td.watch / doc.log / doc.close only."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.generality._shapes import (
    Encoder,
    GRUNet,
    Segmenter,
    SmallCNN,
    assert_finds,
    assert_healthy,
    images,
    loader,
    tokens,
    watch,
)


def _train(model, loss_fn, data, tmp_path, steps=16, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    doc = watch(model, opt, tmp_path)
    for _ in range(steps):
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    return doc.close()


def _cnn(tmp_path, loss_fn, classes=7, batch=24, **kw):
    torch.manual_seed(0)
    x, y = images(classes=classes)
    return _train(SmallCNN(classes), loss_fn, loader(x, y, batch), tmp_path, **kw)


def _gru(tmp_path, loss_fn, batch=16, **kw):
    torch.manual_seed(0)
    t, tags = tokens()
    return _train(GRUNet(), loss_fn, loader(t, tags, batch), tmp_path, **kw)


# -- TD506 probabilities-as-logits ------------------------------------------------------------
def test_td506_softmax_into_cross_entropy_on_a_cnn(tmp_path):
    f = assert_finds(_cnn(tmp_path, lambda out, y: F.cross_entropy(out.softmax(1), y)), "TD506")
    assert f.evidence["classes"] == 7
    assert_healthy(_cnn(tmp_path, lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1)))


def test_td506_sigmoid_into_bce_with_logits_on_a_gru_multilabel(tmp_path):
    # multi-label: which of the 6 tags occur in the sequence
    def multilabel(out, tags, sigmoid):
        present = F.one_hot(tags, 6).amax(1).float()
        logits = out["logits"]
        return F.binary_cross_entropy_with_logits(logits.sigmoid() if sigmoid else logits, present)

    assert_finds(_gru(tmp_path, lambda o, y: multilabel(o, y, True)), "TD506")
    assert_healthy(_gru(tmp_path, lambda o, y: multilabel(o, y, False)))


# -- TD507 degenerate-loss --------------------------------------------------------------------
def test_td507_cross_entropy_over_one_logit_on_a_cnn(tmp_path):
    x, y = images(classes=2)

    def run(buggy):
        torch.manual_seed(0)
        model = SmallCNN(out=1)
        if buggy:
            fn = lambda out, y: nn.CrossEntropyLoss()(out, y.float().unsqueeze(1))  # noqa: E731
        else:
            fn = lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(1), y.float())  # noqa: E731
        return _train(model, fn, loader(x, y, 20), tmp_path)

    assert_finds(run(True), "TD507")
    assert_healthy(run(False))


# -- TD508 loss-shape-broadcast ---------------------------------------------------------------
def test_td508_l1_broadcast_on_a_cnn_regressor(tmp_path):
    x, _ = images()
    target = x.mean((1, 2, 3)) * 4  # a scalar per image: its brightness

    def run(buggy):
        torch.manual_seed(0)
        fn = (  # (B, 1) against (B,)
            (lambda out, y: F.smooth_l1_loss(out, y))
            if buggy
            else (lambda out, y: F.smooth_l1_loss(out.squeeze(1), y))
        )
        return _train(SmallCNN(out=1), fn, loader(x, target, 12), tmp_path)

    f = assert_finds(run(True), "TD508")
    assert f.evidence["broadcast_shape"] == [12, 12]
    assert_healthy(run(False))


def test_td508_distillation_normalized_over_the_batch_on_a_cnn(tmp_path):
    torch.manual_seed(1)
    teacher = SmallCNN(7).requires_grad_(False)

    def kd(dim):
        def fn(out, y):
            with torch.no_grad():
                soft = F.softmax(teacher(fn.x) / 2, dim=1)
            student = F.log_softmax(out / 2, dim=dim)
            return F.cross_entropy(out, y) + F.kl_div(student, soft, reduction="batchmean")

        return fn

    for dim, buggy in ((0, True), (1, False)):
        torch.manual_seed(0)
        x, y = images()
        fn = kd(dim)
        data = loader(x, y, 24)

        def batches(fn=fn, data=data):
            while True:
                fn.x, yb = next(data)
                yield fn.x, yb

        report = _train(SmallCNN(7), fn, batches(), tmp_path)
        if buggy:
            f = assert_finds(report, "TD508")
            assert f.evidence["loss_fn"] == "kl_div" and f.evidence["normalized_dim"] == 0
            assert f.evidence["loss_dims"] == [1]
        else:
            assert_healthy(report)


def test_td508_channels_last_segmentation_logits(tmp_path):
    """A segmenter's (B, C, H, W) logits permuted to channels-last (B, H, W, C) before
    cross_entropy: with H == W == C torch accepts the (B, H, W) mask and reads H as classes."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(96, 1, 6, 6, generator=g)
    mask = (x[:, 0] * 6).long().clamp(max=5)  # 6 classes by brightness, 6x6 images

    def run(buggy):
        torch.manual_seed(0)
        fn = (
            (lambda out, m: F.cross_entropy(out.permute(0, 2, 3, 1), m))
            if buggy
            else (lambda out, m: F.cross_entropy(out, m))
        )
        return _train(Segmenter(6), fn, loader(x, mask, 8), tmp_path, lr=1e-2)

    f = assert_finds(run(True), "TD508")
    assert f.evidence["case"] == "class_dim" and f.evidence["head_dim"] == 3
    assert f.where.module == "classifier"
    assert_healthy(run(False))


def test_td508_token_logits_with_time_where_classes_belong(tmp_path):
    """A transformer encoder's (B, T, C) token logits given to cross_entropy as is, T == C == 5."""
    t, tags = tokens(length=5, classes=5)

    def run(fix):
        torch.manual_seed(0)
        fn = {
            None: lambda out, y: F.cross_entropy(out, y),  # the bug
            "transpose": lambda out, y: F.cross_entropy(out.transpose(1, 2), y),
            "flatten": lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten()),
        }[fix]
        return _train(Encoder(classes=5), fn, loader(t, tags, 16), tmp_path, lr=1e-2)

    f = assert_finds(run(None), "TD508")
    assert f.evidence["case"] == "class_dim" and f.where.module == "head"
    assert_healthy(run("transpose"))
    assert_healthy(run("flatten"))


def test_td508_implicit_log_softmax_dim_on_gru_token_logits(tmp_path):
    """`F.log_softmax(x)` without dim on a 3-D (B, T, C) tensor normalizes dim 0 (the batch)."""
    import warnings

    def fn(dim):
        return lambda out, y: F.nll_loss(F.log_softmax(out["tokens"], dim).transpose(1, 2), y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's implicit-dim deprecation warning
        f = assert_finds(_gru(tmp_path, fn(None)), "TD508")
    assert f.evidence["normalized_dim"] == 0 and f.evidence["loss_dims"] == [1]
    assert_healthy(_gru(tmp_path, fn(-1)))


# -- TD509 log-of-nonpositive -----------------------------------------------------------------
def test_td509_log_of_relu_into_nll_on_a_gru(tmp_path):
    buggy = lambda out, y: F.nll_loss(torch.log(F.relu(out["logits"])), y[:, -1])  # noqa: E731
    assert_finds(_gru(tmp_path, buggy, steps=8), "TD509")
    healthy = lambda out, y: F.nll_loss(F.log_softmax(out["logits"], 1), y[:, -1])  # noqa: E731
    assert_healthy(_gru(tmp_path, healthy))


def _segment(tmp_path, loss_fn, steps=12, classes=6):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(96, 1, 10, 10, generator=g)
    mask = (x[:, 0] * classes).long().clamp(max=classes - 1)
    return _train(Segmenter(classes), loss_fn, loader(x, mask, 16), tmp_path, steps=steps, lr=1e-2)


def test_td508_segmentation_log_softmax_over_a_spatial_dim(tmp_path):
    """Per-pixel nll_loss on (B, C, H, W): a log_softmax over dim 2 (the rows) instead of 1."""
    f = assert_finds(_segment(tmp_path, lambda o, m: F.nll_loss(F.log_softmax(o, 2), m)), "TD508")
    assert f.evidence["normalized_dim"] == 2 and f.evidence["loss_dims"] == [1]
    assert f.evidence["input_shape"] == [16, 6, 10, 10]
    assert_healthy(_segment(tmp_path, lambda o, m: F.nll_loss(F.log_softmax(o, 1), m)))


def test_td506_per_pixel_softmax_into_cross_entropy(tmp_path):
    assert_finds(_segment(tmp_path, lambda o, m: F.cross_entropy(o.softmax(1), m)), "TD506")

    def dice_plus_ce(out, m):  # a soft-dice-like term on probabilities is not a logits loss
        onehot = F.one_hot(m, 6).permute(0, 3, 1, 2).float()
        return F.cross_entropy(out, m) + F.mse_loss(out.softmax(1), onehot)

    assert_healthy(_segment(tmp_path, dice_plus_ce))


def test_td508_silent_on_a_two_tower_contrastive_loss(tmp_path):
    """CLIP-style: a CNN image tower and a GRU text tower, a (B, B) similarity matrix and
    `arange(B)` targets in both directions, one of them written as a log_softmax over dim 0."""

    class TwoTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = SmallCNN(out=8)
            self.text = GRUNet(classes=8)

        def forward(self, batch):
            img, txt = batch
            a = F.normalize(self.image(img), dim=1)
            b = F.normalize(self.text(txt)["logits"], dim=1)
            return a @ b.t() / 0.1

    def clip_loss(sim, _):
        target = torch.arange(sim.shape[0])
        i2t = F.nll_loss(F.log_softmax(sim, dim=1), target)
        t2i = F.nll_loss(F.log_softmax(sim, dim=0), target)  # columns: text -> image
        return (i2t + t2i) / 2

    x, _ = images(n=192)
    t, _ = tokens(n=192)
    g = torch.Generator().manual_seed(0)

    def pairs():
        while True:
            idx = torch.randperm(192, generator=g)[:16]
            yield (x[idx], t[idx]), None

    torch.manual_seed(0)
    assert_healthy(_train(TwoTower(), clip_loss, pairs(), tmp_path, steps=12))

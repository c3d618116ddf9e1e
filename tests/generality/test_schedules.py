"""Generality of the schedule and optimizer-setup rules (TD503, TD514, TD515, TD211): each bug
planted on a model shape the scenarios do not use (a transformer encoder over tokens, a CNN with
BatchNorm, a GRU with a dict output, a conv segmenter under autocast), beside its healthy twin,
judged through td.watch / doc.log / doc.close only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler

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


# -- TD503 lr-schedule-anomaly ----------------------------------------------------------------
def _encoder_run(tmp_path, make_sched, epochs=4, per_epoch=10, per_batch=True):
    torch.manual_seed(0)
    t, tags = tokens(length=8, classes=5)
    model = Encoder(classes=5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = make_sched(opt, epochs * per_epoch)
    doc = watch(model, opt, tmp_path)
    data = loader(t, tags, 16)
    for _ in range(epochs):
        for _ in range(per_epoch):
            x, y = next(data)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x).transpose(1, 2), y)
            loss.backward()
            opt.step()
            if per_batch:
                sched.step()
            doc.log(loss=loss)
        if not per_batch:
            sched.step()
    return doc.close()


def test_td503_step_lr_sized_in_epochs_stepped_per_batch_on_a_transformer(tmp_path):
    epoch_sized = lambda opt, total: lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)  # noqa: E731
    f = assert_finds(_encoder_run(tmp_path, epoch_sized), "TD503")
    assert f.evidence["cases"][0]["kind"] == "collapse"
    assert f.evidence["scheduler"]["class"] == "StepLR"
    assert f.where.source and "test_schedules.py" in f.where.source
    # the same scheduler stepped once per epoch, and OneCycle sized in batches: silent
    assert_healthy(_encoder_run(tmp_path, epoch_sized, per_batch=False))
    one_cycle = lambda opt, total: lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=total)  # noqa: E731
    assert_healthy(_encoder_run(tmp_path, one_cycle))


def _gru_accum(tmp_path, in_micro_loop: bool, accum=3, steps=20):
    torch.manual_seed(0)
    t, tags = tokens()
    model = GRUNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    warmup = lambda s: min(1.0, (s + 1) / 5)  # noqa: E731  (warmup sized in optimizer steps)
    sched = lr_scheduler.LambdaLR(opt, warmup)
    doc = watch(model, opt, tmp_path)
    data = loader(t, tags, 8)
    for _ in range(steps):
        for _ in range(accum):
            x, y = next(data)
            loss = F.cross_entropy(model(x)["logits"], y[:, -1])
            (loss / accum).backward()
            doc.log(loss=loss)
            if in_micro_loop:
                sched.step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not in_micro_loop:
            sched.step()
    return doc.close()


def test_td503_warmup_stepped_per_micro_batch_on_a_gru(tmp_path):
    f = assert_finds(_gru_accum(tmp_path, True), "TD503")
    case = f.evidence["cases"][0]
    assert case["kind"] == "ahead_of_optimizer"
    assert case["scheduler_steps"] == 60 and case["optimizer_steps"] == 20
    assert_healthy(_gru_accum(tmp_path, False))


def _cnn_amp(tmp_path, guarded: bool, steps=32):
    """float16 autocast on a CNN with GradScaler(init_scale=2**32): the scaler skips the
    first optimizer steps while it backs off; a OneCycleLR sized in optimizer steps."""
    torch.manual_seed(0)
    x, y = images(classes=7)
    model = SmallCNN(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**32)
    doc = watch(model, opt, tmp_path, scaler=scaler)
    data = loader(x, y, 24)
    for _ in range(steps):
        xb, yb = next(data)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(xb).float(), yb)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if not guarded or scaler.get_scale() >= scale:
            sched.step()
        doc.log(loss=loss)
    return doc.close()


def test_td503_scheduler_stepping_on_amp_skipped_steps_on_a_cnn(tmp_path):
    f = assert_finds(_cnn_amp(tmp_path, guarded=False), "TD503")
    case = f.evidence["cases"][0]
    assert case["kind"] == "ahead_of_optimizer" and case["skipped_steps"] > 3
    assert case["scheduler_steps"] - case["optimizer_steps"] == case["skipped_steps"]
    assert "GradScaler skipped" in f.title
    assert_healthy(_cnn_amp(tmp_path, guarded=True))


# -- TD514 weight-decay-on-norms --------------------------------------------------------------
def _cnn_bn(tmp_path, split: bool, steps=40):
    torch.manual_seed(0)
    x, y = images(classes=5)
    model = SmallCNN(5, bn=True)
    wd = 1e-2
    if split:
        decay = [p for p in model.parameters() if p.dim() > 1]
        rest = [p for p in model.parameters() if p.dim() <= 1]
        params = [{"params": decay}, {"params": rest, "weight_decay": 0.0}]
    else:
        params = model.parameters()
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=wd)
    doc = watch(model, opt, tmp_path)
    data = loader(x, y, 24)
    for _ in range(steps):
        xb, yb = next(data)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    return doc.close()


def test_td514_decay_on_batchnorm_gains_of_a_cnn(tmp_path):
    f = assert_finds(_cnn_bn(tmp_path, split=False), "TD514")
    assert set(f.evidence["gains"]) == {"features.1.weight", "features.5.weight"}
    assert_healthy(_cnn_bn(tmp_path, split=True))


def _encoder_adamw(tmp_path, split: bool, steps=40):
    torch.manual_seed(0)
    t, tags = tokens(length=8, classes=5)
    model = Encoder(classes=5)
    wd = 1.0  # strong decoupled decay (grokking-style setups use 1.0)
    if split:
        decay = [p for n, p in model.named_parameters() if p.dim() > 1 and "embed" not in n]
        rest = [p for n, p in model.named_parameters() if p.dim() <= 1 or "embed" in n]
        params = [{"params": decay}, {"params": rest, "weight_decay": 0.0}]
    else:
        params = model.parameters()
    opt = torch.optim.AdamW(params, lr=5e-3, weight_decay=wd)
    doc = watch(model, opt, tmp_path)
    data = loader(t, tags, 16)
    for _ in range(steps):
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    return doc.close()


def test_td514_adamw_decay_on_layernorm_gains_of_a_transformer(tmp_path):
    f = assert_finds(_encoder_adamw(tmp_path, split=False), "TD514")
    assert "norm.weight" in f.evidence["gains"]
    assert all(g["shrink"] >= 0.1 for g in f.evidence["gains"].values())
    assert_healthy(_encoder_adamw(tmp_path, split=True))


# -- TD515 grad-accumulation-unnormalized -----------------------------------------------------
def _cnn_accum(tmp_path, divide: bool, accum=3, steps=16, clip=False, opt_cls="sgd"):
    torch.manual_seed(0)
    x, y = images(classes=7)
    model = SmallCNN(7)
    if opt_cls == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, opt, tmp_path)
    data = loader(x, y, 12)
    for _ in range(steps):
        for _ in range(accum):
            xb, yb = next(data)
            loss = F.cross_entropy(model(xb), yb)
            doc.log(loss=loss)
            (loss / accum if divide else loss).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return doc.close()


def test_td515_sgd_accumulation_without_division_on_a_cnn(tmp_path):
    f = assert_finds(_cnn_accum(tmp_path, divide=False), "TD515")
    assert f.evidence["micro_batches"] == 3 and f.evidence["optimizer"] == "SGD"
    assert_healthy(_cnn_accum(tmp_path, divide=True))


def test_td515_adam_with_clipping_without_division_on_a_cnn(tmp_path):
    f = assert_finds(_cnn_accum(tmp_path, divide=False, clip=True, opt_cls="adam"), "TD515")
    assert f.evidence["clip"]["active_share"] >= 0.5
    assert_healthy(_cnn_accum(tmp_path, divide=True, clip=True, opt_cls="adam"))


def _token_accum(tmp_path, divisor: str, accum=3, steps=12):
    """A transformer tagger over padded sequences (-100 past the padding), token losses summed
    per micro-batch and divided by a target count: the micro-batch's own (`own`, `own_f32`)
    or the whole accumulation window's (`window`, `window_f32`)."""
    torch.manual_seed(0)
    t, tags = tokens(length=8, classes=5)
    tags = tags.clone()
    tags[::3, 5:] = -100  # every third sequence is padded after 5 tokens
    model = Encoder(classes=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, opt, tmp_path)
    data = loader(t, tags, 8)
    for _ in range(steps):
        micro = [next(data) for _ in range(accum)]
        window = sum((y != -100).sum() for _, y in micro)
        for x, y in micro:
            summed = F.cross_entropy(model(x).transpose(1, 2), y, reduction="sum")
            n = window if divisor.startswith("window") else (y != -100).sum()
            loss = summed / (n.float() if divisor.endswith("f32") else n)
            loss.backward()
            doc.log(loss=loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return doc.close()


def test_td515_token_sums_divided_by_each_micro_batchs_count_on_a_transformer(tmp_path):
    """Each pass a per-micro-batch token mean: 3 of them add up to 3x the mean (the count as
    a 0-d int64 CPU tensor is folded into a constant factor; as float32 it is a tensor
    divisor: both are measured)."""
    for own, window in (("own", "window"), ("own_f32", "window_f32")):
        f = assert_finds(_token_accum(tmp_path, own), "TD515")
        assert f.evidence["micro_batches"] == 3 and f.evidence["divided_by_own_count_steps"] >= 3
        assert_healthy(_token_accum(tmp_path, window))


# -- TD211 fp16-without-scaler ----------------------------------------------------------------
def _segmenter_autocast(tmp_path, dtype, steps=16):
    """Per-pixel cross-entropy divided by the pixel count a second time (`mean` already
    divides): the gradient reaching the logits is ~1e-9 per element."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(128, 1, 16, 16, generator=g)
    mask = (x[:, 0] * 4).long().clamp(max=3)
    model = Segmenter(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, opt, tmp_path)  # no GradScaler
    data = loader(x, mask, 16)
    for _ in range(steps):
        xb, mb = next(data)
        with torch.autocast("cpu", dtype=dtype):
            loss = F.cross_entropy(model(xb), mb) / mb.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    return doc.close()


def test_td211_fp16_autocast_without_scaler_on_a_conv_segmenter(tmp_path):
    f = assert_finds(_segmenter_autocast(tmp_path, torch.float16), "TD211")
    assert f.severity.value == "error" and f.evidence["zero_grad_share"]["body.0"] > 0.5
    assert_healthy(_segmenter_autocast(tmp_path, torch.bfloat16))

"""TD206 exploding-gradient on hand-built timelines."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from tests.rules._loss_inputs_tl import SUPERVISED_CE
from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["enc.weight", "enc.bias", "head.weight", "head.bias"]


# A supervised cross-entropy whose loss does not fall through the jump: what TD206 judges at
# warning/error (a loss not meant to fall, or falling through the jump, is info).
CE = SUPERVISED_CE


def _tl(head_norms, enc=0.5, losses=None, loss_event=CE):
    steps = {}
    for step, v in head_norms.items():
        steps[step] = {
            "grads.norm": {"enc.weight": enc, "enc.bias": 0.0, "head.weight": v, "head.bias": 0.0},
            "optim.lr": {"opt0/group0": 0.8},
        }
    for step in range(1, max(head_norms) + 1):
        row = steps.setdefault(step, {})
        row["loss.train"] = [(losses or {}).get(step, 2.0)]
        if loss_event is not None:
            row["loss_inputs.observed"] = [0]
    events = [loss_event] if loss_event is not None else []
    return make_timeline(params=PARAMS, steps=steps, events=events)


def test_names_the_layer_and_step_of_the_jump():
    f = assert_fires("TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 0.7, 20: 35.0, 30: 40.0}))
    assert f.step == 20
    assert f.where.module == "head"
    assert f.where.params == ("head.weight", "head.bias")
    assert f.severity is Severity.ERROR  # still high at the last sampled step
    assert f.evidence["median_before"] == 0.675
    assert "lr=0.8" in f.cause


def test_a_transient_jump_is_a_warning():
    f = assert_fires("TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 9.0, 20: 0.6}))
    assert f.severity is Severity.WARNING and f.step == 10


def test_healthy_noise_and_scale_do_not_fire():
    # a layer with a large but steady norm, and one that doubles: neither is a jump
    assert_silent("TD206", _tl({1: 50.0, 2: 60.0, 3: 55.0, 10: 70.0, 20: 52.0}, enc=1e-3))
    assert_silent("TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 1.3, 20: 2.6}))


def test_growth_from_zero_and_steady_growth_are_not_jumps():
    # LoRA-like: exactly zero first, then a steady linear rise
    assert_silent("TD206", _tl({1: 0.0, 2: 0.01, 3: 0.02, 10: 0.09, 20: 0.19, 30: 0.29}))


def test_needs_history_and_ignores_nonfinite():
    assert_silent("TD206", _tl({1: 0.6, 2: 60.0}))
    assert_silent("TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: float("inf")}))


# The seq2seq tutorial (GRU encoder, Bahdanau attention decoder, two Adams): the attention
# weights get almost no gradient while the scores are uniform, then the gradient rises as they
# differentiate. Measured per-layer gradient and weight norms (steps 1, 2, 3, 10).
SEQ2SEQ_GRADS = {
    "enc.gru": [0.347, 0.398, 0.371, 0.205],
    "dec.out": [1.06, 1.23, 1.14, 0.652],
    "dec.gru": [1.12, 1.22, 0.988, 0.425],
    "dec.attention.Va": [0.00725, 0.0822, 0.141, 0.0974],
    "dec.attention.Wa": [3.9e-4, 6.7e-4, 1.7e-3, 1.81e-2],
}
SEQ2SEQ_WEIGHTS = {
    "enc.gru": 16.0,
    "dec.out": 4.1,
    "dec.gru": 19.7,
    "dec.attention.Va": 0.56,
    "dec.attention.Wa": 6.54,
}


def _layers_tl(grads, weights, steps=(1, 2, 3, 10)):
    names = [f"{layer}.weight" for layer in grads]
    return make_timeline(
        params=names,
        steps={
            s: {
                "grads.norm": {f"{layer}.weight": g[i] for layer, g in grads.items()},
                "params.norm": {f"{layer}.weight": w for layer, w in weights.items()},
                "optim.lr": {"opt0/group0": 1e-3},
            }
            for i, s in enumerate(steps)
        },
    )


def test_a_gradient_rising_from_far_below_the_other_layers_is_not_an_explosion():
    assert_silent("TD206", _layers_tl(SEQ2SEQ_GRADS, SEQ2SEQ_WEIGHTS))
    # without the weight norms, the layer is judged against its own history (as before)
    f = assert_fires("TD206", _tl({1: 3.9e-4, 2: 6.7e-4, 3: 1.7e-3, 10: 1.81e-2}))
    assert f.where.module == "head"


def test_a_rising_layer_that_jumps_far_above_the_other_layers_still_explodes():
    grads = {**SEQ2SEQ_GRADS, "dec.attention.Wa": [3.9e-4, 6.7e-4, 1.7e-3, 50.0]}
    f = assert_fires("TD206", _layers_tl(grads, SEQ2SEQ_WEIGHTS))
    assert f.where.module == "dec.attention.Wa" and f.step == 10


def test_every_layer_rising_together_is_still_an_explosion():
    # lr too large: all layers grow x1.4 per step from an ordinary level, then jump
    grads = {
        "a": [0.5, 0.7, 1.0, 40.0],
        "b": [0.2, 0.28, 0.4, 16.0],
        "c": [1.0, 1.4, 2.0, 80.0],
    }
    weights = {"a": 5.0, "b": 5.0, "c": 5.0}
    f = assert_fires("TD206", _layers_tl(grads, weights))
    assert f.step == 10


def test_a_jump_the_loss_falls_through_is_info():
    # the network leaving its init: gradients rise 50x while the loss keeps falling
    losses = {s: 2.0 * 0.97**s for s in range(1, 31)}
    f = assert_fires(
        "TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 0.7, 20: 35.0, 30: 40.0}, losses=losses)
    )
    assert f.severity is Severity.INFO
    assert f.evidence["loss_before_after"][1] < f.evidence["loss_before_after"][0]


def test_a_jump_on_a_loss_not_known_to_fall_is_info():
    f = assert_fires(
        "TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 0.7, 20: 35.0, 30: 40.0}, loss_event=None)
    )
    assert f.severity is Severity.INFO


# -- Adam-type optimizers: a gradient jump is harm only where the update or the loss shows it --


def _adam_tl(g0, u0, losses, cls="AdamW"):
    """Three layers sampled at steps 1, 2, 3, 10, 20, 30, 40: `g0`/`u0` are the first layer's
    gradient and update norms at those steps, the two others steady (an Adam-sized update)."""
    from traindoctor.testing import optimizer_facts

    sampled = (1, 2, 3, 10, 20, 30, 40)
    names = ["l0.weight", "l1.weight", "l2.weight"]
    steps = {}
    for i, s in enumerate(sampled):
        steps[s] = {
            "grads.norm": {"l0.weight": g0[i], "l1.weight": 0.002, "l2.weight": 0.003},
            "params.norm": {n: 9.0 for n in names},
            "params.update": {"l0.weight": u0[i], "l1.weight": 0.2, "l2.weight": 0.2},
            "optim.lr": {"opt0/group0": 1e-3},
        }
    for s in range(1, 41):
        row = steps.setdefault(s, {})
        row["loss.train"] = [losses[s - 1]]
        row["loss_inputs.observed"] = [0]
    tl = make_timeline(params=names, steps=steps, events=[CE])
    tl.facts["optimizers"] = [optimizer_facts(names, lr=1e-3, cls=cls)]
    return tl


# Measured on a 16-layer GELU MLP (width 256), AdamW lr 1e-3, random labels (seed 2): the first
# layer's gradient 3e-7 at steps 1-3, 0.038 at step 30 (1e5x); its update 0.02-0.14 throughout
# (eps-damped while the gradient was tiny, then Adam's usual size); the loss flat at 2.33.
MLP_G0 = [3.2e-7, 3.2e-7, 4.7e-7, 1.5e-6, 1.1e-4, 0.038, 0.0012]
MLP_U0 = [0.026, 0.020, 0.019, 0.023, 0.10, 0.14, 0.06]
FLAT = [2.33 + 0.03 * ((s * 7) % 5 - 2) for s in range(1, 41)]


def test_under_adam_a_gradient_jump_with_usual_updates_and_a_flat_loss_is_not_reported():
    assert_silent("TD206", _adam_tl(MLP_G0, MLP_U0, FLAT))
    # the same under SGD, whose step grows with the gradient: still reported
    assert_fires("TD206", _adam_tl(MLP_G0, MLP_U0, FLAT, cls="SGD"))


def test_under_adam_a_jump_the_loss_rises_with_is_a_warning_that_says_what_was_measured():
    rising = FLAT[:29] + [4.0 + s for s in range(11)]
    f = assert_fires("TD206", _adam_tl(MLP_G0, MLP_U0, rising))
    assert f.severity is Severity.WARNING and f.step == 30
    assert "updates this large" not in f.cause and "rose with it" in f.cause
    assert f.evidence["update"]["ratio"] < 10


def test_under_adam_a_jump_whose_update_jumped_too_is_reported():
    u0 = MLP_U0[:5] + [14.0, 6.0]  # the update 100x its level: weights thrown far
    f = assert_fires("TD206", _adam_tl(MLP_G0, u0, FLAT))
    assert f.evidence["update"]["ratio"] >= 10 and "its update rose" in f.cause


# -- real runs (torch, CPU, one thread): explosions found, healthy Adam runs left alone -------


def _train(model, opt, batch, loss_fn, steps, tmp_path):
    """`steps` of `opt` on `loss_fn(model(x), y)` under td.watch; the report."""
    torch.set_num_threads(1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for i in range(steps):
        x, y = batch(i)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    report = doc.close()
    assert not report.internal_errors
    return report


def _batches(x, y, size, seed):
    g = torch.Generator().manual_seed(seed)

    def batch(_):
        i = torch.randint(0, len(x), (size,), generator=g)
        return x[i], y[i]

    return batch


def test_an_rnn_without_clipping_under_sgd_explodes(tmp_path):
    # A tanh RNN classifying the sign of a 30-step sum, SGD lr=1 with no clipping: the gradient
    # leaves its history at step 60 as the loss climbs (TD210). Other seeds' gradients climb
    # more steadily between the sampled steps (no 10x jump): there TD206 is silent and TD210
    # alone reports the rise.
    torch.manual_seed(0)

    class Rnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(4, 32, batch_first=True)
            self.head = nn.Linear(32, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    model = Rnn()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 30, 4, generator=g)
    y = (x[:, :, 0].sum(1) > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    f = _td206(_train(model, opt, _batches(x, y, 32, 0), F.cross_entropy, 80, tmp_path))
    assert f is not None and f.severity in (Severity.ERROR, Severity.WARNING)


def test_a_deep_net_with_a_learning_rate_too_high_explodes(tmp_path):
    # 8 tanh layers, SGD lr=4: the gradients jump ~30x at step 10 or 20, the loss climbs
    # 2.3 -> 68 (fires on each of seeds 0-4).
    torch.manual_seed(0)
    layers = [nn.Linear(32, 64), nn.Tanh()]
    for _ in range(7):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 32, generator=g)
    y = (x[:, :10] + 0.5 * x[:, 10:20]).argmax(1)
    opt = torch.optim.SGD(model.parameters(), lr=4.0)
    f = _td206(_train(model, opt, _batches(x, y, 64, 0), F.cross_entropy, 80, tmp_path))
    assert f is not None and f.severity in (Severity.ERROR, Severity.WARNING)


def _gelu_mlp(width, depth=16):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.LayerNorm(width), nn.Linear(width, 10))


@pytest.mark.parametrize("seed", [0, 2])
def test_a_deep_gelu_mlp_under_adamw_on_random_labels_is_not_an_explosion(seed, tmp_path):
    # The false alarm: the first layers' gradients (~3e-7 at init) rise 1e4-1e5x by step 30-60
    # while AdamW keeps their updates at its usual size and the loss stays flat (random
    # labels). Seed 2 was reported as an error with "updates this large".
    torch.manual_seed(seed)
    model = _gelu_mlp(256)
    x, y = torch.randn(512, 256), torch.randint(0, 10, (512,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    report = _train(model, opt, _batches(x, y, 64, seed), F.cross_entropy, 200, tmp_path)
    assert _td206(report) is None


def test_healthy_adam_runs_are_not_explosions(tmp_path):
    torch.manual_seed(1)
    # a deep GELU MLP learning a real rule
    model = _gelu_mlp(64, depth=12)
    x = torch.randn(1024, 64)
    y = x[:, :10].argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    assert (
        _td206(_train(model, opt, _batches(x, y, 64, 1), F.cross_entropy, 150, tmp_path / "m"))
        is None
    )
    # a small causal transformer on a repeating token stream
    vocab, block = 32, 16
    emb, pos = nn.Embedding(vocab, 32), nn.Parameter(torch.zeros(block, 32))
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), num_layers=2
    )
    head = nn.Linear(32, vocab)
    mask = nn.Transformer.generate_square_subsequent_mask(block)

    class Lm(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.pos, self.enc, self.head = emb, pos, enc, head

        def forward(self, idx):
            return self.head(self.enc(self.emb(idx) + self.pos, mask=mask, is_causal=True))

    stream = torch.arange(4096) * 7 % vocab

    def lm_batch(i):
        starts = torch.randint(0, 4096 - block - 1, (16,), generator=gen)
        idx = torch.stack([stream[s : s + block + 1] for s in starts])
        return idx[:, :-1], idx[:, 1:]

    gen = torch.Generator().manual_seed(1)
    lm = Lm()
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-4)

    def lm_loss(logits, y):
        return F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))

    assert _td206(_train(lm, opt, lm_batch, lm_loss, 150, tmp_path / "t")) is None
    # a CNN with BatchNorm: which quadrant of the image is brightest
    cnn = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 4),
    )
    imgs = torch.randn(1024, 1, 16, 16)
    labels = torch.randint(0, 4, (1024,))
    for k in range(4):
        r, c = divmod(k, 2)
        imgs[labels == k, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] += 1.0
    opt = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    report = _train(cnn, opt, _batches(imgs, labels, 32, 1), F.cross_entropy, 150, tmp_path / "c")
    assert _td206(report) is None


def _td206(report):
    return next((f for f in report.findings if f.code == "TD206"), None)

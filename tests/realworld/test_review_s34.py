"""Session 34 (H1): healthy programs of kinds not tried before, and known wrong verdicts.

Wrong verdicts fixed (each test fails before its fix; rule tests hold the timeline-level ones):
- TD403 (warning) on a conditional GAN (eriklindernoren/PyTorch-GAN's cgan.py layout) whose
  generator, BatchNorm1d in train mode, is sampled one row per class under no_grad for an
  image grid. The generator is never evaluated (no .eval(), no loss with gradients off): its
  samples are computed as its training forwards are. The modes probe now sees, in the first
  steps, that the generator's training outputs are the discriminator's inputs (`model_feeds`);
  such a model's gradient-free forwards are info unless the run shows an evaluation. A loss on
  the samples with gradients off is still a warning, and so is the head of an encoder/head
  pair validated in train mode.
- TD103/TD102/TD111 (errors) on a VQ-VAE whose EMA codebook is re-assigned as new
  nn.Parameters in forward (zalandoresearch/pytorch-vq-vae): the copies probe now follows the
  tensors no optimizer holds after a re-walk of the params, so their EMA changes are seen.
- TD108 'raise the learning rate' on a deep ReLU MLP under Adam whose gradients are below eps,
  and 'labels apart from their inputs' on its 40-layer twin (tests/rules/test_td108_*).
- TD207:W beside TD210:E on hf-run-mlm::lr-x1000: ratios normal at step 1, fallen after the
  weights grew 250x; now an info naming the growth (tests/rules/test_td207_*).
- TD301:E and TD108:W on a triplet margin loss met at init (loss exactly 0): info
  (tests/rules/test_td301_*, test_td108_*).

Silent before and after under `traindoctor run` (written for this review, not kept): DCGAN
tutorial, WGAN-GP (critic fakes under no_grad, autograd.grad penalty), original WGAN with
weight clipping, SNGAN (spectral_norm, hinge), SimCLR NT-Xent (T=0.07), triplet metric
learning, RealNVP, Glow-style flow (ActNorm data-dependent init, slogdet), VAE with linear
and cyclical KL annealing, Gumbel-softmax VAE, PINN (Adam; Adam then L-BFGS), pygcn GCN, PPO
(clipped ratio, entropy bonus), CTC BiLSTM, top-1 MoE with a load-balancing loss, NeRF MLP
with positional encoding, mean teacher, RetinaNet-style focal loss head. Only infos remain
(TD502, TD514, TD504 on full-batch GCN/PINN, TD104 on a critic's cancelling bias).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.findings import Severity


def _found(doc) -> dict:
    report = doc.report
    assert not report.internal_errors, report.internal_errors
    return {f.code: f for f in report.findings}


def _loud(doc) -> dict:
    return {c: f for c, f in _found(doc).items() if f.severity is not Severity.INFO}


# -- TD403: a generator sampled under no_grad in train mode -------------------------------------


class _CGen(nn.Module):
    def __init__(self, classes=10, latent=16, out=64):
        super().__init__()
        self.label_emb = nn.Embedding(classes, classes)
        self.model = nn.Sequential(
            nn.Linear(latent + classes, 64),
            nn.LeakyReLU(0.2),
            nn.Linear(64, 128),
            nn.BatchNorm1d(128, 0.8),
            nn.LeakyReLU(0.2),
            nn.Linear(128, out),
            nn.Tanh(),
        )

    def forward(self, z, labels):
        return self.model(torch.cat((self.label_emb(labels), z), -1))


class _CDisc(nn.Module):
    def __init__(self, classes=10, inp=64):
        super().__init__()
        self.label_embedding = nn.Embedding(classes, classes)
        self.model = nn.Sequential(
            nn.Linear(classes + inp, 128), nn.LeakyReLU(0.2), nn.Dropout(0.4), nn.Linear(128, 1)
        )

    def forward(self, x, labels):
        return self.model(torch.cat((x, self.label_embedding(labels)), -1))


def cgan(tmp_path, scored=False, steps=30):
    torch.manual_seed(0)
    g, d = _CGen(), _CDisc()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    protos = torch.randn(10, 64).tanh()
    b = 32
    with td.watch({"G": g, "D": d}, [opt_g, opt_d], out_dir=tmp_path, console=False) as doc:
        for i in range(steps):
            labels = torch.randint(0, 10, (b,))
            real = (protos[labels] + 0.1 * torch.randn(b, 64)).clamp(-1, 1)
            valid, fake = torch.ones(b, 1), torch.zeros(b, 1)
            opt_g.zero_grad()
            gen_labels = torch.randint(0, 10, (b,))
            gen = g(torch.randn(b, 16), gen_labels)
            g_loss = F.mse_loss(d(gen, gen_labels), valid)
            g_loss.backward()
            opt_g.step()
            opt_d.zero_grad()
            d_loss = (
                F.mse_loss(d(real, labels), valid) + F.mse_loss(d(gen.detach(), gen_labels), fake)
            ) / 2
            d_loss.backward()
            opt_d.step()
            if i % 10 == 9:  # sample_image(): one row of the grid per class
                with torch.no_grad():
                    for c in range(10):
                        x = g(torch.randn(10, 16), torch.full((10,), c))
                        if scored:  # a score of the samples, gradients off: an evaluation
                            F.mse_loss(x, protos[c].expand(10, -1))
    return doc


def test_a_generator_sampled_in_train_mode_is_info(tmp_path):
    f = _found(cgan(tmp_path))["TD403"]
    assert f.severity is Severity.INFO, f
    assert f.evidence["outputs_feed"] == "D" and "feed `D`" in f.title


def test_a_generator_scored_with_a_loss_in_train_mode_is_still_a_warning(tmp_path):
    f = _loud(cgan(tmp_path, scored=True))["TD403"]
    assert f.evidence["outputs_feed"] is None


def test_the_head_of_an_encoder_head_pair_validated_in_train_mode_is_a_warning(tmp_path):
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU())
    head = nn.Sequential(nn.Dropout(0.3), nn.Linear(32, 3))
    opt = torch.optim.SGD([*enc.parameters(), *head.parameters()], lr=0.05)
    w = torch.randn(8, 3)
    with td.watch({"enc": enc, "head": head}, opt, out_dir=tmp_path, console=False) as doc:
        for i in range(40):
            x = torch.randn(32, 8)
            loss = F.cross_entropy(head(enc(x)), (x @ w).argmax(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i % 20 == 19:  # accuracy only, no eval(), no loss: the classic validation
                with torch.no_grad():
                    for _ in range(3):
                        xv = torch.randn(64, 8)
                        (head(enc(xv)).argmax(1) == (xv @ w).argmax(1)).float().mean()
    f = _loud(doc)["TD403"]
    assert f.evidence["model"] == "head", f.evidence


# -- a VQ-VAE whose codebook is an EMA re-assigned as new nn.Parameters in forward ---------------


class _VQEMA(nn.Module):
    """zalandoresearch/pytorch-vq-vae's VectorQuantizerEMA, as written there."""

    def __init__(self, num, dim, commitment=0.25, decay=0.99, eps=1e-5):
        super().__init__()
        self._embedding = nn.Embedding(num, dim)
        self._embedding.weight.data.normal_()
        self.register_buffer("_ema_cluster_size", torch.zeros(num))
        self._ema_w = nn.Parameter(torch.Tensor(num, dim))
        self._ema_w.data.normal_()
        self.num, self.dim, self.commitment, self.decay, self.eps = num, dim, commitment, decay, eps

    def forward(self, inputs):
        flat = inputs.view(-1, self.dim)
        w = self._embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * flat @ w.t()
        enc = torch.zeros(flat.shape[0], self.num).scatter_(1, dist.argmin(1, keepdim=True), 1)
        quantized = (enc @ w).view(inputs.shape)
        if self.training:
            size = self._ema_cluster_size * self.decay + (1 - self.decay) * enc.sum(0)
            n = size.data.sum()
            self._ema_cluster_size = (size + self.eps) / (n + self.num * self.eps) * n
            self._ema_w = nn.Parameter(self._ema_w * self.decay + (1 - self.decay) * enc.t() @ flat)
            self._embedding.weight = nn.Parameter(self._ema_w / self._ema_cluster_size[:, None])
        loss = self.commitment * F.mse_loss(quantized.detach(), inputs)
        return loss, inputs + (quantized - inputs).detach()


def test_a_vq_vae_whose_ema_codebook_is_reassigned_in_forward_is_not_an_error(tmp_path):
    """Before: TD103:E 'trainable params in no optimizer', TD102:E 'grad None at every step'
    and TD111:E 'the optimizer holds tensors that are not params' on the codebook. The copies
    probe fingerprinted the tensors it found at attach, never the ones re-assigned since, so
    their EMA changes were never seen; now they are followed by name, and TD111 says that the
    replacements are written by the program itself (info)."""
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "enc": nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)),
            "vq": _VQEMA(16, 8),
            "dec": nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32)),
        }
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    protos = torch.randn(12, 32)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(40):
            x = protos[torch.randint(0, 12, (64,))] + 0.05 * torch.randn(64, 32)
            vq_loss, q = model["vq"](model["enc"](x))
            loss = F.mse_loss(model["dec"](q), x) + vq_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert not _loud(doc), _loud(doc)


# -- healthy programs of new kinds, silent before and after (kept where cheap) -----------------


@pytest.mark.slow
def test_a_vae_with_cyclical_kl_annealing_is_silent(tmp_path):
    """haofuml/cyclical_annealing's frange_cycle_linear: beta ramps 0 -> 1 four times, and the
    loss rises with it each cycle (a loss that climbs by design, not a divergence)."""
    torch.manual_seed(0)
    n = 100
    beta = torch.ones(n)
    for c in range(4):
        for i in range(12):
            beta[c * 25 + i] = i / 12
    enc = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    dec = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 64))
    model = nn.ModuleDict({"enc": enc, "dec": dec})
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    protos = torch.randn(20, 64)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for it in range(n):
            x = protos[torch.randint(0, 20, (128,))] + 0.1 * torch.randn(128, 64)
            mu, logvar = enc(x).chunk(2, -1)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            rec = F.mse_loss(dec(z), x, reduction="sum") / x.size(0)
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
            loss = rec + beta[it] * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert not _loud(doc), _loud(doc)


def test_a_head_recreated_in_forward_is_still_an_error(tmp_path):
    """The classic bug beside the VQ-VAE above: `self.head = nn.Linear(...)` inside forward()
    gives a new random head at each call, whose values change (new each time) and which gets
    gradients no optimizer applies. 12d41f8 read its changes as the program writing its own
    params (TD103 silent, TD108 info only); it stays TD103's error."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(20, 32)

        def forward(self, x):
            h = torch.relu(self.body(x))
            self.head = nn.Linear(32, 3)  # a new, random head at every call
            return self.head(h)

    torch.manual_seed(0)
    x_all = torch.randn(512, 20)
    y_all = (x_all[:, 0] > 0).long() + (x_all[:, 1] > 0).long()
    model = Net()
    model(x_all[:2])  # the head exists when the optimizer is built (as in zero-code mode)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(120):
            i = torch.randint(0, 512, (64,))
            loss = F.cross_entropy(model(x_all[i]), y_all[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doc.log(loss=loss)
    codes = {(f.code, f.severity) for f in doc.report.findings}
    assert ("TD103", Severity.ERROR) in codes or ("TD111", Severity.ERROR) in codes, codes

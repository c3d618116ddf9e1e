"""Training styles of the ecosystem programs added in session 28, written small and independently
of them, under the zero-code `traindoctor run`: a VQ-VAE whose codebook lookup is a custom
autograd.Function with a straight-through backward (nadavbh12/VQ-VAE), one whose codebook is a
buffer updated by moving averages in forward with an inline straight-through estimator
(rosinality/vq-vae-2-pytorch), Deep SVDD's one-class loss to a fixed center on a bias-free net
(lukasruff/Deep-SVDD-PyTorch), and a CRNN's log_softmax into a summed CTCLoss with concatenated
targets (GitYCC/crnn-pytorch). Each must end without a warning or error; the VQ-VAE whose
codebook loss reads the straight-through output (the codebook never gets a gradient, as in
showlab/Olaf-World#8) is TD102, and the CRNN given its raw scores (no log_softmax) TD506."""

from __future__ import annotations

import pytest

from tests.cli.conftest import reported_batch

VQ_FUNCTION = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


class NearestEmbed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, emb):  # z (B, D), emb (D, K)
        idx = torch.cdist(z, emb.t()).argmin(1)
        ctx.save_for_backward(idx)
        ctx.k = emb.shape[1]
        return emb.t().index_select(0, idx), idx

    @staticmethod
    def backward(ctx, grad, _):
        (idx,) = ctx.saved_tensors
        grad_z = grad if ctx.needs_input_grad[0] else None
        grad_emb = None
        if ctx.needs_input_grad[1]:
            onehot = F.one_hot(idx, ctx.k).to(grad.dtype)
            onehot = onehot / onehot.sum(0).clamp(min=1)
            grad_emb = grad.t() @ onehot
        return grad_z, grad_emb


class VQ(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.dec = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 16))
        self.emb = nn.Parameter(torch.randn(4, 8) * 0.5)

    def forward(self, x):
        z_e = self.enc(x)
        z_q, _ = NearestEmbed.apply(z_e, self.emb.detach())
        emb, _ = NearestEmbed.apply(z_e.detach(), self.emb)
        return self.dec(z_q), z_e, CODEBOOK_SIDE


model = VQ()
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
protos = torch.randn(8, 16)
for step in range(60):
    x = protos[torch.randint(0, 8, (64,))] + 0.05 * torch.randn(64, 16)
    opt.zero_grad()
    recon, z_e, emb = model(x)
    vq_loss = F.mse_loss(emb, z_e.detach())
    commit = F.mse_loss(z_e, emb.detach())
    loss = F.mse_loss(recon, x) + vq_loss + 0.25 * commit
    loss.backward()
    opt.step()
print("done", loss.item())
"""

VQ_EMA = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


class Quantize(nn.Module):
    def __init__(self, dim, n, decay=0.9, eps=1e-5):
        super().__init__()
        self.decay, self.eps, self.n = decay, eps, n
        embed = torch.randn(dim, n)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.zeros(n))
        self.register_buffer("embed_avg", embed.clone())

    def forward(self, z):
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embed + self.embed.pow(2).sum(0)
        idx = (-d).max(1)[1]
        onehot = F.one_hot(idx, self.n).type(z.dtype)
        q = F.embedding(idx, self.embed.t())
        if self.training:
            self.cluster_size.data.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
            self.embed_avg.data.mul_(self.decay).add_(z.detach().t() @ onehot, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            size = (self.cluster_size + self.eps) / (n + self.n * self.eps) * n
            self.embed.data.copy_(self.embed_avg / size.unsqueeze(0))
        diff = (q.detach() - z).pow(2).mean()
        return z + (q - z).detach(), diff


enc = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
quant = Quantize(4, 8)
dec = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 16))
params = [*enc.parameters(), *dec.parameters()]
opt = torch.optim.Adam(params, lr=2e-3)
protos = torch.randn(8, 16)
for step in range(60):
    x = protos[torch.randint(0, 8, (64,))] + 0.05 * torch.randn(64, 16)
    opt.zero_grad()
    q, latent = quant(enc(x))
    loss = F.mse_loss(dec(q), x) + 0.25 * latent
    loss.backward()
    opt.step()
print("done", loss.item())
"""

ONE_CLASS = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(1, 8, 5, bias=False, padding=2), nn.BatchNorm2d(8, affine=False),
    nn.LeakyReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 8 * 8, 16, bias=False),
)
X = torch.rand(256, 1, 16, 16) * (torch.rand(1, 1, 16, 16) > 0.5)
with torch.no_grad():
    net.eval()
    c = net(X).mean(0)
    c[(c.abs() < 0.1) & (c < 0)] = -0.1
    c[(c.abs() < 0.1) & (c >= 0)] = 0.1
net.train()
opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-6)
for epoch in range(6):
    for i in torch.randperm(256).split(32):
        opt.zero_grad()
        loss = torch.sum((net(X[i]) - c) ** 2, dim=1).mean()
        loss.backward()
        opt.step()
print("done", loss.item())
"""

CTC = """
import torch
import torch.nn as nn

torch.manual_seed(0)


class CRNN(nn.Module):
    def __init__(self, classes=11):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d((4, 1)))
        self.rnn = nn.LSTM(16 * 2, 32, bidirectional=True)
        self.dense = nn.Linear(64, classes)

    def forward(self, x):
        f = self.cnn(x)  # (B, 16, 2, W)
        b, c, h, w = f.shape
        f = f.view(b, c * h, w).permute(2, 0, 1)  # (W, B, C*H): time-major
        out, _ = self.rnn(f)
        return self.dense(out)  # (T, B, classes)


model = CRNN()
opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
criterion = nn.CTCLoss(reduction="sum", zero_infinity=True)
glyphs = torch.rand(10, 8, 3)
for step in range(50):
    lengths = torch.randint(2, 6, (16,))
    images, targets = torch.zeros(16, 1, 8, 24), []
    for b, n in enumerate(lengths.tolist()):
        digits = torch.randint(0, 10, (n,))
        for j, d in enumerate(digits.tolist()):
            images[b, 0, :, 4 * j : 4 * j + 3] = glyphs[d]
        targets.append(digits + 1)  # 0 is the blank
    targets = torch.cat(targets)
    logits = model(images)
    log_probs = CTC_INPUT
    input_lengths = torch.LongTensor([logits.size(0)] * 16)
    loss = criterion(log_probs, targets, input_lengths, lengths)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5)
    opt.step()
print("done", loss.item())
"""

HEALTHY = {
    "vq_custom_function": VQ_FUNCTION.replace("CODEBOOK_SIDE", "emb"),
    "vq_ema_buffers": VQ_EMA,
    "deep_svdd_one_class": ONE_CLASS,
    "crnn_ctc": CTC.replace("CTC_INPUT", "torch.nn.functional.log_softmax(logits, dim=2)"),
}
BUGGY = {
    # The codebook loss reads the straight-through output, whose codebook path is detached.
    "vq_codebook_loss_on_st_output": VQ_FUNCTION.replace("CODEBOOK_SIDE", "z_q"),
    # The raw scores into CTCLoss, no log_softmax (SeanNaren/deepspeech.pytorch#488).
    "crnn_ctc_raw_scores": CTC.replace("CTC_INPUT", "logits"),
}

pytestmark = pytest.mark.slow

runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


def test_codebook_loss_on_the_straight_through_output_is_td102(runs):
    r = runs["vq_codebook_loss_on_st_output"]
    assert r.rc == 0, r
    found = r.finding("TD102")
    assert found["severity"] == "error", r
    assert "emb" in str(found), found


def test_raw_scores_into_ctc_loss_are_td506(runs):
    r = runs["crnn_ctc_raw_scores"]
    assert r.rc == 0, r
    found = r.finding("TD506")
    assert found["severity"] == "error", r
    assert found["evidence"]["loss_fn"] == "ctc_loss", found

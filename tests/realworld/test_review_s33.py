"""Session 33's review of the newest rules (TD523, TD522, TD209, TD103/TD105/TD403/TD503)
against healthy programs written in other styles than the rules' own tests, each close to its
rule's condition; in-process `td.watch` (the zero-code runs were checked by hand: same codes).

False alarms found and fixed (each test fails before its fix):
- TD523 on a DETR-style set predictor (facebookresearch/detr's layout: nn.Transformer
  sequence-first, 10 object queries read as (10, 2, D) from 2 images, Hungarian matching):
  its 2 x 5 matched boxes, a (10, 4) l1_loss input, were read as 'one prediction per index of
  the layer's time'. The model's input (images) leads with the layer's batch.
- TD523 on a sequence-first LSTM classifier (legacy torchtext's (T, B) batches) whose batch
  size equals its sequence length: the last, smaller batch's (32, 8, F) layer input was
  compared with the (32, C) prediction of a full batch at another step.
- TD522 on keypoint heatmaps whose unlabelled joints carry -1, the per-element MSE masked by
  visibility after the call (reduction='none').
- TD209 on a T5-style tied head (N(0, 1) shared embedding, the last hidden state multiplied
  by d_model ** -0.5 before the tied lm_head, as HF's modeling_t5): 'final layer `lm_head`
  starts with output std 1.17, 13.2x its input's 0.0884'. A tied layer's gain is the
  embedding's init over the program's own scale; only logits that cost more than the rule's
  ce_margin at init (std above sqrt(2 x 1 nat)) are reported for it.
- TD105 (error) on knowledge distillation: the teacher trained by its own SGD first, then
  kept in eval mode, requires_grad left on, used in the student's loss: 'SGD #0 got fresh
  gradients that its step() never applied'. Its phase is over: an info.
And TD209 on a tied output layer (dreamgonfly/transformer-pytorch: `generator.weight =
embedding.weight`, nn.Embedding's N(0, 1)) now names the tie and the shared weight's init.

Silent before and after (tried under `traindoctor run`, kept here where cheap): tied LMs with
GPT-2's N(0, 0.02) and fairseq's N(0, d**-0.5); CTC over (T, B, C) with a seq-first BiLSTM; a
bentrevett-style seq2seq (seq-first LSTMs, teacher forcing); a seq-first TransformerEncoder
with per-sequence and per-token losses; sigmoid(z) * 5 + 0.5, exp, softplus and ReLU heads on
in-range targets; a sigmoid autoencoder on [0, 1] images with BCE + MSE and a tanh generator
with L1 on [-1, 1] images; a sigmoid head with 3% of its targets above 1; a GAN whose D is
frozen by toggling requires_grad; ReduceLROnPlateau.step(val_loss), OneCycleLR per batch,
LambdaLR.step(epoch), CosineAnnealingWarmRestarts.step(epoch + i / iters).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td


def _loud(doc) -> dict:
    return {f.code: f for f in doc.report.findings if f.severity.value != "info"}


def _codes(doc) -> dict:
    return {f.code: f for f in doc.report.findings}


# -- TD523 ------------------------------------------------------------------------------------


class _Detr(nn.Module):
    def __init__(self, queries=10, d=32, classes=4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, d, 4, 4), nn.ReLU())
        self.transformer = nn.Transformer(d, 4, 1, 1, 64, dropout=0.1)  # sequence first
        self.query_embed = nn.Embedding(queries, d)
        self.class_embed = nn.Linear(d, classes + 1)
        self.bbox_embed = nn.Linear(d, 4)

    def forward(self, x):
        src = self.backbone(x).flatten(2).permute(2, 0, 1)  # (HW, B, D)
        tgt = self.query_embed.weight.unsqueeze(1).repeat(1, x.shape[0], 1)  # (N, B, D)
        hs = self.transformer(src, tgt).transpose(0, 1)  # (B, N, D)
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()


def test_detr_matched_boxes_as_many_as_queries_are_not_a_sequence_dim(tmp_path):
    torch.manual_seed(0)
    model, g = _Detr(), torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(6):
            imgs = torch.randn(2, 3, 16, 16, generator=g)
            labels = torch.randint(0, 4, (2, 5), generator=g)
            boxes = torch.rand(2, 5, 4, generator=g)
            logits, pred_boxes = model(imgs)
            src_idx = torch.stack([torch.randperm(10, generator=g)[:5] for _ in range(2)])
            batch_idx = torch.arange(2).repeat_interleave(5)
            target_classes = torch.full((2, 10), 4)
            target_classes[batch_idx, src_idx.flatten()] = labels.flatten()
            loss = F.cross_entropy(logits.transpose(1, 2), target_classes)
            matched = pred_boxes[batch_idx, src_idx.flatten()]  # (10, 4): 2 images x 5 boxes
            loss = loss + 5 * F.l1_loss(matched, boxes.flatten(0, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert "TD523" not in _codes(doc), _codes(doc)


def test_last_smaller_batch_of_a_batch_size_equal_to_the_sequence_length(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 32, 8, generator=g), torch.randint(0, 5, (200,), generator=g)
    lstm, fc = nn.LSTM(8, 16), nn.Linear(16, 5)  # sequence first, fed (T, B, F)
    model = nn.ModuleDict({"rnn": lstm, "fc": fc})
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(2):
            for i in range(0, 200, 32):  # 6 batches of 32, then one of 8
                xb = x[i : i + 32].transpose(0, 1)  # (32, B, 8)
                _, (h, _) = lstm(xb)
                loss = F.cross_entropy(fc(h[-1]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert "TD523" not in _codes(doc), _codes(doc)


# -- TD522 ------------------------------------------------------------------------------------


def _heatmaps(tmp_path, masked: bool):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 12, 12, generator=g)
    hm = torch.sigmoid(F.avg_pool2d(x.repeat(1, 4, 1, 1), 3, 1, 1) * 3)
    vis = (torch.rand(128, 4, 1, 1, generator=g) > 0.3).float().expand_as(hm)
    target = torch.where(vis.bool(), hm, torch.full_like(hm, -1.0))  # -1: joint not labelled
    model = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, 1, 1))
    model.append(nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for i in range(0, 128, 16):
            pred, t, m = model(x[i : i + 16]), target[i : i + 16], vis[i : i + 16]
            if masked:
                loss = (F.mse_loss(pred, t, reduction="none") * m).sum() / m.sum()
            else:
                loss = F.mse_loss(pred, t)  # the marker reaches the loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _loud(doc)


def test_heatmaps_of_unlabelled_joints_masked_after_the_loss(tmp_path):
    assert "TD522" not in _heatmaps(tmp_path / "masked", masked=True)
    f = _heatmaps(tmp_path / "unmasked", masked=False)["TD522"]
    assert "Every target outside the range is -1" in f.cause and "mask" in f.fix


# -- TD209 ------------------------------------------------------------------------------------


class _TiedLM(nn.Module):
    def __init__(self, style: str, vocab=100, d=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.block = nn.TransformerEncoderLayer(d, 4, 128, 0.0, batch_first=True)
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        if style == "gpt2":
            for m in self.modules():
                if isinstance(m, nn.Linear | nn.Embedding):
                    nn.init.normal_(m.weight, 0.0, 0.02)
        elif style == "fairseq":
            nn.init.normal_(self.embed.weight, 0.0, d**-0.5)
        # vaswani: N(0, 1) * sqrt(d) on the input side; t5: N(0, 1), the output rescaled
        self.scale = 1.0 if style in ("gpt2", "t5") else math.sqrt(d)
        self.out_scale = d**-0.5 if style == "t5" else 1.0

    def forward(self, idx):
        mask = nn.Transformer.generate_square_subsequent_mask(idx.size(1))
        h = self.ln_f(self.block(self.embed(idx) * self.scale, src_mask=mask))
        return self.lm_head(h * self.out_scale)  # T5: d_model ** -0.5 before the tied head


def _lm(tmp_path, style):
    torch.manual_seed(0)
    model, g = _TiedLM(style), torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), 3e-4)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(4):
            ids = torch.randint(0, 100, (8, 13), generator=g)
            loss = F.cross_entropy(model(ids[:, :-1]).reshape(-1, 100), ids[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _loud(doc)


@pytest.mark.parametrize("style", ["gpt2", "fairseq", "t5"])
def test_tied_output_layer_with_a_sound_init_is_silent(tmp_path, style):
    assert _lm(tmp_path, style) == {}


def test_tied_output_layer_with_the_embeddings_default_init_names_the_tie(tmp_path):
    f = _lm(tmp_path, "vaswani")["TD209"]
    assert f.where.module == "lm_head"
    assert "tied: `embed.weight` is also `lm_head.weight`" in f.cause
    assert "the embedding `embed`" in f.cause and "64 ** -0.5" in f.fix


# -- TD105 / TD103 ----------------------------------------------------------------------------


def test_teacher_in_eval_after_its_own_phase_is_not_a_lost_step(tmp_path):
    """Knowledge distillation: the teacher trained first by its SGD, then put in eval (its
    requires_grad left on, no no_grad) and used in the student's loss."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 20, generator=g), torch.randint(0, 3, (512,), generator=g)
    teacher = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3))
    student = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
    opt_t = torch.optim.SGD(teacher.parameters(), 0.05, momentum=0.9)
    opt_s = torch.optim.Adam(student.parameters(), 1e-3)
    with td.watch([teacher, student], [opt_t, opt_s], out_dir=tmp_path, console=False) as doc:
        for i in range(0, 512, 32):
            loss = F.cross_entropy(teacher(x[i : i + 32]), y[i : i + 32])
            opt_t.zero_grad()
            loss.backward()
            opt_t.step()
        teacher.eval()
        for _ in range(2):
            for i in range(0, 512, 32):
                t_logits, s_logits = teacher(x[i : i + 32]), student(x[i : i + 32])
                kd = F.kl_div(
                    F.log_softmax(s_logits / 4, 1),
                    F.softmax(t_logits / 4, 1),
                    reduction="batchmean",
                )
                loss = 16 * 0.7 * kd + 0.3 * F.cross_entropy(s_logits, y[i : i + 32])
                opt_s.zero_grad()
                loss.backward()
                opt_s.step()
    assert _loud(doc) == {}, _loud(doc)
    f = _codes(doc)["TD105"]
    assert "stayed in eval mode" in f.title and "requires_grad_(False)" in f.fix

"""Misses from real reports (session 33), each written in the reporter's style beside its fixed
twin, which must stay silent (no error, no warning); in-process `td.watch`.

TD524, next-token prediction whose prediction at a position reads the next token (its target):
- pytorch/tutorials#2478 (https://github.com/pytorch/tutorials/issues/2478, fixed by PR
  #2662): the word-level LM, seq-first `nn.TransformerEncoder` called without `src_mask`,
  targets `source[i + 1 : i + 1 + T].reshape(-1)`.
- alex-matton/causal-transformer-decoder#1
  (https://github.com/alex-matton/causal-transformer-decoder/issues/1): an encoder-decoder
  whose seq-first `nn.TransformerDecoder` is trained without `tgt_mask` ("the network can
  simply copy tokens to the output").
- huggingface/transformers#48745 (https://github.com/huggingface/transformers/issues/48745):
  a BERT-style model used as a causal LM (`is_decoder=True`) whose hand-written softmax
  attention gets only the padding mask; labels shifted inside the model
  (`logits[:, :-1]` against `labels[:, 1:]`), padded positions -100.
- jingyaogong/minimind#453 (https://github.com/jingyaogong/minimind/issues/453): `is_causal`
  switched to False in `F.scaled_dot_product_attention` to get past an error, a padding
  `attn_mask` passed instead (batch-first, the loss computed in the model).
- "Forget to apply the causal mask in mini-GPT's attention"
  (https://lynx-cortex.pages.dev/phase-17-mini-gpt/break/00-break-forget-causal-mask/): a
  block calling `nn.MultiheadAttention(batch_first=True)` with the mask left out.
Silent beside them: each fixed twin, a BERT-style masked LM, a prefix LM (bidirectional over
its prefix, loss on every position), a classifier over token sequences.

TD525, channels-last images reshaped (not permuted) for the first conv:
- PaddlePaddle/Paddle#29716 (https://github.com/PaddlePaddle/Paddle/issues/29716) in PyTorch:
  (N, H, W, C) images given to the conv by `reshape(-1, 3, H, W)` in the training loop (a view
  of the stored tensor). Silent: the permute, and images stored channels-first.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td

V = 24  # vocabulary


def _loud(doc) -> dict:
    return {f.code: f for f in doc.report.findings if f.severity.value != "info"}


def _tokens(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V, shape, generator=g)


def _train(tmp_path, model, batches, loss_of, *, lr=1e-3) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for batch in batches:
            loss = loss_of(model, *batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _loud(doc)


# -- pytorch/tutorials#2478: seq-first nn.TransformerEncoder, no src_mask ----------------------
class _TutorialLM(nn.Module):
    def __init__(self, d_model: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(V, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 2, 64, 0.1)
        self.transformer_encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.linear = nn.Linear(d_model, V)
        self.d_model = d_model

    def forward(self, src, src_mask=None):
        src = self.embedding(src) * math.sqrt(self.d_model)
        return self.linear(self.transformer_encoder(src, src_mask))


@pytest.mark.parametrize("masked", [False, True])
def test_tutorial_lm_without_its_causal_mask(tmp_path, masked):
    source = _tokens(1, 200, 8)  # batchified (T, B)
    batches = [(source[i : i + 16], source[i + 1 : i + 17].reshape(-1)) for i in range(0, 64, 16)]

    def loss_of(model, data, targets):
        mask = nn.Transformer.generate_square_subsequent_mask(16) if masked else None
        return nn.CrossEntropyLoss()(model(data, mask).view(-1, V), targets)

    loud = _train(tmp_path, _TutorialLM(), batches, loss_of)
    if masked:
        assert loud == {}
        return
    assert list(loud) == ["TD524"], loud
    f = loud["TD524"]
    assert f.severity.value == "error" and f.evidence["layout"].startswith("sequence-first")
    assert f.evidence["share_targets_equal_next_ids"] == 1.0
    assert f.evidence["next_position_dependence"] > 1e-3 and "not causal" in f.cause


# -- alex-matton/causal-transformer-decoder#1: nn.TransformerDecoder without tgt_mask ---------
class _Seq2Seq(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(V, d)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, 2, 64, 0.0), 1, enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, 2, 64, 0.0), 2)
        self.out = nn.Linear(d, V)

    def forward(self, src, tgt, tgt_mask=None):
        memory = self.encoder(self.emb(src))
        return self.out(self.decoder(self.emb(tgt), memory, tgt_mask=tgt_mask))


@pytest.mark.parametrize("masked", [False, True])
def test_transformer_decoder_without_tgt_mask(tmp_path, masked):
    src = _tokens(2, 12, 48)  # (S, N)
    tgt = torch.cat([torch.zeros(1, 48, dtype=torch.long), src.flip(0)])  # BOS + reversed
    batches = [(src[:, i : i + 8], tgt[:, i : i + 8]) for i in range(0, 32, 8)]

    def loss_of(model, s, t):
        mask = nn.Transformer.generate_square_subsequent_mask(12) if masked else None
        logits = model(s, t[:-1], tgt_mask=mask)
        return F.cross_entropy(logits.reshape(-1, V), t[1:].reshape(-1))

    loud = _train(tmp_path, _Seq2Seq(), batches, loss_of)
    assert loud == {} if masked else list(loud) == ["TD524"], loud


# -- huggingface/transformers#48745: hand-written attention, padding mask only ----------------
class _BertAsCausalLM(nn.Module):
    def __init__(self, d: int = 32, causal: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.word = nn.Embedding(V, d, padding_idx=0)
        self.pos = nn.Embedding(16, d)
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(2))
        self.ffn = nn.ModuleList(
            nn.Sequential(nn.Linear(d, 64), nn.GELU(), nn.Linear(64, d)) for _ in range(2)
        )
        self.norm = nn.ModuleList(nn.LayerNorm(d) for _ in range(4))
        self.head = nn.Linear(d, V)
        self.causal, self.h = causal, 2

    def forward(self, input_ids, attention_mask, labels):
        b, n = input_ids.shape
        x = self.word(input_ids) + self.pos(torch.arange(n))
        ext = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(x.dtype).min
        if self.causal:  # what BertLMHeadModel adds for is_decoder=True
            tril = torch.ones(n, n, dtype=torch.bool).tril()
            ext = ext.masked_fill(~tril, torch.finfo(x.dtype).min)
        for i in range(2):
            q, k, v = self.qkv[i](x).view(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1)) + ext
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
            x = self.norm[2 * i](x + ctx)
            x = self.norm[2 * i + 1](x + self.ffn[i](x))
        logits = self.head(x)
        shift_logits = logits[:, :-1, :].contiguous()
        shift_labels = labels[:, 1:].contiguous()
        return nn.CrossEntropyLoss()(shift_logits.view(-1, V), shift_labels.view(-1))


@pytest.mark.parametrize("causal", [False, True])
def test_bert_used_as_causal_lm_without_causal_mask(tmp_path, causal):
    ids = _tokens(3, 48, 16)
    attn = torch.ones_like(ids)
    for r in range(0, 48, 3):  # right padding
        attn[r, 12 - r % 5 :] = 0
    ids = ids * attn
    labels = ids.masked_fill(attn == 0, -100)
    batches = [(ids[i : i + 8], attn[i : i + 8], labels[i : i + 8]) for i in range(0, 48, 8)]
    loud = _train(tmp_path, _BertAsCausalLM(causal=causal), batches, lambda m, *b: m(*b))
    assert loud == {} if causal else list(loud) == ["TD524"], loud


# -- jingyaogong/minimind#453: SDPA with is_causal=False and a padding attn_mask --------------
class _MiniMind(nn.Module):
    def __init__(self, d: int = 32, is_causal: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(V, d)
        self.wqkv = nn.ModuleList(nn.Linear(d, 3 * d, bias=False) for _ in range(2))
        self.wo = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(2))
        self.mlp = nn.ModuleList(nn.Linear(d, d) for _ in range(2))
        self.norm = nn.RMSNorm(d)
        self.out = nn.Linear(d, V, bias=False)
        self.is_causal = is_causal

    def forward(self, input_ids, attention_mask, targets):
        b, n = input_ids.shape
        h = self.tok(input_ids)
        pad = attention_mask[:, None, None, :].bool()
        if self.is_causal:  # the fix: the padding mask and the causal one together
            pad = pad & torch.ones(n, n, dtype=torch.bool).tril()
        for i in range(2):
            q, k, v = self.wqkv[i](h).view(b, n, 3, 4, -1).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=pad, is_causal=False)
            h = h + self.wo[i](o.transpose(1, 2).reshape(b, n, -1))
            h = h + F.silu(self.mlp[i](self.norm(h)))
        logits = self.out(self.norm(h))
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), ignore_index=0)


@pytest.mark.parametrize("is_causal", [False, True])
def test_minimind_sdpa_with_is_causal_false(tmp_path, is_causal):
    data = _tokens(4, 48, 17)
    x, y = data[:, :-1], data[:, 1:]
    mask = torch.ones_like(x)
    batches = [(x[i : i + 8], mask[i : i + 8], y[i : i + 8]) for i in range(0, 48, 8)]
    loud = _train(tmp_path, _MiniMind(is_causal=is_causal), batches, lambda m, *b: m(*b))
    assert loud == {} if is_causal else list(loud) == ["TD524"], loud


# -- the mini-GPT break: nn.MultiheadAttention(batch_first=True), mask=None -------------------
class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, causal_mask):
        h = self.norm1(x)
        x = x + self.attention(h, h, h, attn_mask=causal_mask, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))


class _MiniGPT(nn.Module):
    def __init__(self, d: int = 32, prefix: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.pos = nn.Embedding(V, d), nn.Parameter(torch.zeros(16, d))
        self.blocks = nn.ModuleList(_Block(d) for _ in range(2))
        self.head = nn.Linear(d, V)
        self.prefix = prefix

    def forward(self, idx, mask):
        x = self.tok(idx) + self.pos[: idx.size(1)]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x)


def _gpt_batches(seed: int):
    data = _tokens(seed, 48, 17)
    return [(data[i : i + 8, :-1], data[i : i + 8, 1:]) for i in range(0, 48, 8)]


def _causal(n: int, prefix: int = 0) -> torch.Tensor:
    blocked = torch.ones(n, n, dtype=torch.bool).triu(1)
    blocked[:prefix, :prefix] = False  # a prefix LM: its prefix sees itself whole
    return blocked


@pytest.mark.parametrize("mask", [None, "causal", "prefix"])
def test_mini_gpt_block_with_the_mask_left_out(tmp_path, mask):
    attn = None if mask is None else _causal(16, prefix=6 if mask == "prefix" else 0)

    def loss_of(model, x, y):
        return F.cross_entropy(model(x, attn).transpose(1, 2), y)  # (B, V, T) against (B, T)

    loud = _train(tmp_path, _MiniGPT(), _gpt_batches(5), loss_of)
    assert loud == {} if mask else list(loud) == ["TD524"], loud
    if mask is None:
        assert loud["TD524"].evidence["layout"] == "(batch, time)"


# -- healthy: BERT-style masked LM, and a classifier over token sequences ---------------------
def test_masked_lm_and_sequence_classifier_are_silent(tmp_path):
    model = _MiniGPT()
    data = _tokens(6, 48, 16)
    g = torch.Generator().manual_seed(7)
    picked = torch.rand(data.shape, generator=g) < 0.15
    inputs = data.masked_fill(picked, 0)  # [MASK] = 0
    labels = data.masked_fill(~picked, -100)
    batches = [(inputs[i : i + 8], labels[i : i + 8]) for i in range(0, 32, 8)]

    def mlm(m, x, y):
        return F.cross_entropy(m(x, None).reshape(-1, V), y.reshape(-1))

    assert _train(tmp_path / "mlm", model, batches, mlm) == {}
    cls = [(x, (x[:, 0] % 4)) for x, _ in batches]

    def classify(m, x, y):
        return F.cross_entropy(m(x, None).mean(1)[:, :4], y)

    assert _train(tmp_path / "cls", _MiniGPT(), cls, classify) == {}


def test_training_is_unchanged_by_the_experiment(tmp_path):
    """Params bit-identical with and without traindoctor on the causal LM, where the
    experiment runs on the graph of every measured call (dropout on: the RNG as well)."""
    finals = []
    for watched in (False, True):
        model = _TutorialLM()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        source = _tokens(8, 100, 4)
        mask = nn.Transformer.generate_square_subsequent_mask(16)
        torch.manual_seed(11)
        doc = td.watch(model, opt, out_dir=tmp_path, console=False) if watched else None
        for i in range(0, 64, 16):
            out = model(source[i : i + 16], mask).view(-1, V)
            loss = F.cross_entropy(out, source[i + 1 : i + 17].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if doc is not None:
            doc.close()
            series = doc.timeline.series("loss_inputs.stats")
            deps = [v for _, s in series for k, v in (s or {}).items() if k.endswith(".nt_dep")]
            assert deps and set(deps) == {0.0}  # the experiment ran, and measured no leak
            assert "TD524" not in {f.code for f in doc.report.findings}
        finals.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*finals))


# -- PaddlePaddle/Paddle#29716 in PyTorch: NHWC images reshaped to NCHW (TD525) ---------------
def _nhwc_images():
    g = torch.Generator().manual_seed(9)
    y = torch.randint(0, 2, (64,), generator=g)
    ramp = torch.linspace(-1, 1, 16)
    pattern = torch.where(y[:, None, None] == 1, ramp[None, :, None], ramp[None, None, :])
    images = pattern[..., None] * torch.tensor([1.0, 0.5, -0.5]) + 0.1 * torch.randn(
        64, 16, 16, 3, generator=g
    )
    return images, y  # (N, H, W, C), as the dataset stores them


@pytest.mark.parametrize("how", ["reshape", "permute", "nchw-rows"])
def test_channels_last_images_reshaped_for_the_conv(tmp_path, how):
    images, y = _nhwc_images()
    stored = images.permute(0, 3, 1, 2).contiguous() if how == "nchw-rows" else images
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )

    def loss_of(m, i):
        batch = stored[i : i + 16]  # a row slice: a view of the stored tensor
        if how == "reshape":
            x = batch.reshape(-1, 3, 16, 16)
        elif how == "permute":
            x = batch.permute(0, 3, 1, 2)
        else:
            x = batch
        return F.cross_entropy(m(x), y[i : i + 16])

    loud = _train(tmp_path, model, [(i,) for i in range(0, 64, 16)], loss_of)
    assert loud == {} if how != "reshape" else list(loud) == ["TD525"], loud
    if how == "reshape":
        assert loud["TD525"].evidence["view_of_shape"] == [64, 16, 16, 3]


def test_log_softmax_over_time_is_not_called_a_missing_mask(tmp_path):
    """dreamgonfly's log-softmax-over-time mutant, on a causal model: the normalization over
    time makes the loss input at t depend on t + 1, but the model is causal. TD508's case; no
    TD524 (the experiment is not run through a softmax off the class dim)."""

    def loss_of(model, x, y):
        logp = F.log_softmax(model(x, _causal(16)), dim=1)  # over time, not the vocabulary
        return F.nll_loss(logp.reshape(-1, V), y.reshape(-1))

    loud = _train(tmp_path, _MiniGPT(), _gpt_batches(5)[:3], loss_of)
    assert "TD524" not in loud and "TD508" in loud, loud

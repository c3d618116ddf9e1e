"""Transient zeros of the gradient are not blocks, and a gradient rising from ~0 is not an
explosion: standalone training scripts written the way users write them, run unchanged under
the zero-code `traindoctor run`.

TD301 (gradient-blocked-by-op):
- makemore's hand-written GRU (`--type gru`) with its learned start state `self.start`, zeros
  at init: at t=0 `r * hprev` and `(1 - z) * hprev` pass exactly 0 to the gate side. Was an
  ERROR ("`mul` blocks 100% of the loss gradient", step 1, no line); silent.
- an LSTM cell by hand with learned zero-init h0/c0, returning its loss like a HF model; silent.
- ReZero residuals `x + alpha * F(x)` with alpha = 0 at init, loss computed in forward; silent.
- a clamp that really blocks (unnormalized features, prediction clamped to [0, 1]): TD301 error
  at its line; the same clamp inside a model computing its own loss: error, confirmed on the
  second walk.
- in process: `explain_gradients` on a zero-init state, ReZero, an adaLN-zero gate (trained
  operand: not a block) beside a multiply by a constant with zeros and 0 x 0 (blocks).

TD206 (exploding-gradient):
- the PyTorch seq2seq translation tutorial (GRU encoder, Bahdanau attention decoder, NLLLoss,
  two Adams): the attention weights' gradient rises from ~4e-4 at step 1 to 0.044 at step 10
  while the scores differentiate. Was a WARNING ("exploded at step 10, 48x its median");
  silent.
- a vanilla RNN trained with SGD at a far too large learning rate, no clipping: TD206 error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import traindoctor as td
from tests.cli.conftest import line_of, run_all, write
from tests.cli.conftest import td as td_run
from traindoctor.gradpath import BLOCKS, ZERO_OPERAND

MAKEMORE_GRU = """
import random
import torch
import torch.nn as nn
from torch.nn import functional as F
from dataclasses import dataclass


@dataclass
class ModelConfig:
    block_size: int = None
    vocab_size: int = None
    n_embd: int = 64
    n_embd2: int = 64


class GRUCell(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.xh_to_z = nn.Linear(config.n_embd + config.n_embd2, config.n_embd2)
        self.xh_to_r = nn.Linear(config.n_embd + config.n_embd2, config.n_embd2)
        self.xh_to_hbar = nn.Linear(config.n_embd + config.n_embd2, config.n_embd2)

    def forward(self, xt, hprev):  # CELL
        xh = torch.cat([xt, hprev], dim=1)
        r = F.sigmoid(self.xh_to_r(xh))
        hprev_reset = r * hprev
        xhr = torch.cat([xt, hprev_reset], dim=1)
        hbar = F.tanh(self.xh_to_hbar(xhr))
        z = F.sigmoid(self.xh_to_z(xh))
        ht = (1 - z) * hprev + z * hbar
        return ht


class RNN(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.block_size = config.block_size
        self.vocab_size = config.vocab_size
        self.start = nn.Parameter(torch.zeros(1, config.n_embd2))  # the starting hidden state
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.cell = GRUCell(config)
        self.lm_head = nn.Linear(config.n_embd2, self.vocab_size)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        emb = self.wte(idx)
        hprev = self.start.expand((b, -1))
        hiddens = []
        for i in range(t):
            xt = emb[:, i, :]
            ht = self.cell(xt, hprev)
            hprev = ht
            hiddens.append(ht)
        hidden = torch.stack(hiddens, 1)
        logits = self.lm_head(hidden)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


random.seed(42)
torch.manual_seed(42)
syll = ["ma", "ri", "an", "el", "jo", "na", "li", "ka", "th", "ou", "em", "ar"]
words = ["".join(random.choice(syll) for _ in range(random.randint(1, 4))) for _ in range(2000)]
chars = sorted(set("".join(words)))
stoi = {ch: i + 1 for i, ch in enumerate(chars)}
max_len = max(len(w) for w in words)
X = torch.zeros(len(words), max_len + 1, dtype=torch.long)
Y = torch.full((len(words), max_len + 1), -1, dtype=torch.long)
for i, w in enumerate(words):
    ix = torch.tensor([stoi[c] for c in w])
    X[i, 1 : 1 + len(ix)] = ix
    Y[i, : len(ix)] = ix
    Y[i, len(ix)] = 0
config = ModelConfig(vocab_size=len(chars) + 1, block_size=max_len + 1)
model = RNN(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)
for step in range(60):
    ix = torch.randint(0, len(words), (32,))
    logits, loss = model(X[ix], Y[ix])
    model.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if step % 10 == 0:
        print(step, loss.item())
"""

LSTM_H0 = """
# A character-level LSTM written out by hand, with a learned initial state (zeros at init),
# returning its loss from forward like a Hugging Face model.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LSTMCell(nn.Module):
    def __init__(self, n_in, n_hidden):
        super().__init__()
        self.ih = nn.Linear(n_in, 4 * n_hidden)
        self.hh = nn.Linear(n_hidden, 4 * n_hidden, bias=False)

    def forward(self, x, state):
        h, c = state
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, dim=-1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * c + i * g
        h = o * c.tanh()
        return h, c


class CharLSTM(nn.Module):
    def __init__(self, vocab, n_embd=32, n_hidden=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, n_embd)
        self.cell = LSTMCell(n_embd, n_hidden)
        self.h0 = nn.Parameter(torch.zeros(1, n_hidden))
        self.c0 = nn.Parameter(torch.zeros(1, n_hidden))
        self.head = nn.Linear(n_hidden, vocab)

    def forward(self, idx, labels=None):
        B, T = idx.shape
        x = self.embed(idx)
        state = (self.h0.expand(B, -1), self.c0.expand(B, -1))
        outs = []
        for t in range(T):
            state = self.cell(x[:, t], state)
            outs.append(state[0])
        logits = self.head(torch.stack(outs, dim=1))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
        return out


torch.manual_seed(0)
text = "".join("the quick brown fox jumps over the lazy dog " * 40)
chars = sorted(set(text))
data = torch.tensor([chars.index(ch) for ch in text])
model = CharLSTM(len(chars))
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for it in range(60):
    ix = torch.randint(0, len(data) - 17, (32,))
    x = torch.stack([data[i : i + 16] for i in ix])
    y = torch.stack([data[i + 1 : i + 17] for i in ix])
    out = model(x, labels=y)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    if it % 20 == 0:
        print(it, out["loss"].item())
"""

REZERO = """
# ReZero (Bachlechner et al. 2020): every residual branch is scaled by a learned scalar that
# starts at 0, x + alpha * F(x); a small character model that returns its loss (nanoGPT style).
import torch
import torch.nn as nn
from torch.nn import functional as F


class ReZeroBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.resweight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x + self.resweight * self.ff(x)


class Net(nn.Module):
    def __init__(self, vocab, d=64, n_layer=4, ctx=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(*[ReZeroBlock(d) for _ in range(n_layer)])
        self.head = nn.Linear(ctx * d, vocab)

    def forward(self, idx, targets=None):
        x = self.blocks(self.tok(idx))
        logits = self.head(x.flatten(1))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits, targets)
        return logits, loss


torch.manual_seed(0)
text = "".join("to be or not to be that is the question " * 50)
chars = sorted(set(text))
data = torch.tensor([chars.index(c) for c in text])
model = Net(len(chars))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for step in range(80):
    ix = torch.randint(0, len(data) - 9, (64,))
    xb = torch.stack([data[i : i + 8] for i in ix])
    yb = data[ix + 8]
    logits, loss = model(xb, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if step % 20 == 0:
        print(step, loss.item())
"""

CLAMP_BLOCKS = """
# Predicting a probability-like score in [0, 1]; the raw features are not normalized and the
# prediction is clamped into range "to be safe".
import torch
import torch.nn as nn

torch.manual_seed(0)
X = torch.randn(2000, 8) * 30 + 5
y = torch.sigmoid((X[:, :4].sum(1) - 20) / 60).unsqueeze(1)

model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
loss_fn = nn.MSELoss()
for epoch in range(3):
    perm = torch.randperm(len(X))
    for i in range(0, len(X), 100):
        idx = perm[i : i + 100]
        pred = model(X[idx])
        pred = torch.clamp(pred, 0.0, 1.0)  # CLAMP
        loss = loss_fn(pred, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(epoch, loss.item())
"""

CLAMP_IN_FORWARD = """
# The same clamp, inside a model that computes its own loss (no line is known for it).
import torch
import torch.nn as nn
import torch.nn.functional as F


class Scorer(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x, y=None):
        score = self.net(x).clamp(0.0, 1.0)
        loss = F.mse_loss(score, y) if y is not None else None
        return score, loss


torch.manual_seed(0)
X = torch.randn(2000, 8) * 30 + 5
y = torch.sigmoid((X[:, :4].sum(1) - 20) / 60).unsqueeze(1)
model = Scorer()
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
for step in range(60):
    idx = torch.randint(0, len(X), (100,))
    _, loss = model(X[idx], y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

SEQ2SEQ = """
# Adapted from the PyTorch tutorial "NLP From Scratch: Translation with a Sequence to Sequence
# Network and Attention" (GRU encoder, Bahdanau attention decoder, NLLLoss, two Adams), on a
# small generated corpus instead of eng-fra.
import random

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import optim
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

device = torch.device("cpu")
SOS_token = 0
EOS_token = 1
MAX_LENGTH = 10

random.seed(2)
torch.manual_seed(2)
n_words_in, n_words_out = 4345, 2803
subjects_out = [(2, 3), (4, 5), (6, 5), (7, 8), (9, 8), (10, 8)]  # "i am", "he is", ...
subjects_in = [(2, 3), (4, 5), (6, 5), (7, 8), (9, 10), (11, 12)]  # "je suis", "il est", ...
zipf = 1.0 / torch.arange(1, n_words_out - 20 + 1, dtype=torch.float)
pairs = []
for _ in range(2048):
    k = random.randrange(6)
    words = torch.multinomial(zipf, random.randint(1, MAX_LENGTH - 4), replacement=True).tolist()
    src = list(subjects_in[k]) + [20 + (w * 13) % (n_words_in - 20) for w in words]
    tgt = list(subjects_out[k]) + [20 + w for w in words]
    pairs.append((src, tgt))
input_ids = torch.zeros(len(pairs), MAX_LENGTH, dtype=torch.long)
target_ids = torch.zeros(len(pairs), MAX_LENGTH, dtype=torch.long)
for i, (s, t) in enumerate(pairs):
    input_ids[i, : len(s) + 1] = torch.tensor(s + [EOS_token])
    target_ids[i, : len(t) + 1] = torch.tensor(t + [EOS_token])
train_data = TensorDataset(input_ids, target_ids)
train_dataloader = DataLoader(train_data, sampler=RandomSampler(train_data), batch_size=32)


class EncoderRNN(nn.Module):
    def __init__(self, input_size, hidden_size, dropout_p=0.1):
        super(EncoderRNN, self).__init__()
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, input):
        embedded = self.dropout(self.embedding(input))
        output, hidden = self.gru(embedded)
        return output, hidden


class BahdanauAttention(nn.Module):
    def __init__(self, hidden_size):
        super(BahdanauAttention, self).__init__()
        self.Wa = nn.Linear(hidden_size, hidden_size)
        self.Ua = nn.Linear(hidden_size, hidden_size)
        self.Va = nn.Linear(hidden_size, 1)

    def forward(self, query, keys):
        scores = self.Va(torch.tanh(self.Wa(query) + self.Ua(keys)))
        scores = scores.squeeze(2).unsqueeze(1)
        weights = F.softmax(scores, dim=-1)
        context = torch.bmm(weights, keys)
        return context, weights


class AttnDecoderRNN(nn.Module):
    def __init__(self, hidden_size, output_size, dropout_p=0.1):
        super(AttnDecoderRNN, self).__init__()
        self.embedding = nn.Embedding(output_size, hidden_size)
        self.attention = BahdanauAttention(hidden_size)
        self.gru = nn.GRU(2 * hidden_size, hidden_size, batch_first=True)
        self.out = nn.Linear(hidden_size, output_size)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, encoder_outputs, encoder_hidden, target_tensor=None):
        batch_size = encoder_outputs.size(0)
        decoder_input = torch.empty(batch_size, 1, dtype=torch.long, device=device).fill_(SOS_token)
        decoder_hidden = encoder_hidden
        decoder_outputs = []
        attentions = []
        for i in range(MAX_LENGTH):
            decoder_output, decoder_hidden, attn_weights = self.forward_step(
                decoder_input, decoder_hidden, encoder_outputs
            )
            decoder_outputs.append(decoder_output)
            attentions.append(attn_weights)
            if target_tensor is not None:
                decoder_input = target_tensor[:, i].unsqueeze(1)  # Teacher forcing
            else:
                _, topi = decoder_output.topk(1)
                decoder_input = topi.squeeze(-1).detach()
        decoder_outputs = torch.cat(decoder_outputs, dim=1)
        decoder_outputs = F.log_softmax(decoder_outputs, dim=-1)
        attentions = torch.cat(attentions, dim=1)
        return decoder_outputs, decoder_hidden, attentions

    def forward_step(self, input, hidden, encoder_outputs):
        embedded = self.dropout(self.embedding(input))
        query = hidden.permute(1, 0, 2)
        context, attn_weights = self.attention(query, encoder_outputs)
        input_gru = torch.cat((embedded, context), dim=2)
        output, hidden = self.gru(input_gru, hidden)
        output = self.out(output)
        return output, hidden, attn_weights


def train_epoch(dataloader, encoder, decoder, encoder_optimizer, decoder_optimizer, criterion):
    total_loss = 0
    for data in dataloader:
        input_tensor, target_tensor = data
        encoder_optimizer.zero_grad()
        decoder_optimizer.zero_grad()
        encoder_outputs, encoder_hidden = encoder(input_tensor)
        decoder_outputs, _, _ = decoder(encoder_outputs, encoder_hidden, target_tensor)
        loss = criterion(
            decoder_outputs.view(-1, decoder_outputs.size(-1)), target_tensor.view(-1)
        )
        loss.backward()
        encoder_optimizer.step()
        decoder_optimizer.step()
        total_loss += loss.item()
    return total_loss / len(dataloader)


hidden_size = 128
encoder = EncoderRNN(n_words_in, hidden_size).to(device)
decoder = AttnDecoderRNN(hidden_size, n_words_out).to(device)
encoder_optimizer = optim.Adam(encoder.parameters(), lr=0.001)
decoder_optimizer = optim.Adam(decoder.parameters(), lr=0.001)
criterion = nn.NLLLoss()
for epoch in range(1, 2):
    print(epoch, train_epoch(train_dataloader, encoder, decoder, encoder_optimizer, decoder_optimizer, criterion))
"""

RNN_EXPLODES = """
# A vanilla RNN predicting the next value of noisy sine waves, plain SGD with a learning rate
# far too large and no gradient clipping.
import math

import torch
import torch.nn as nn


class SeqModel(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.rnn = nn.RNN(1, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out)


torch.manual_seed(0)
t = torch.linspace(0, 60 * math.pi, 6000)
wave = torch.sin(t) + 0.1 * torch.randn_like(t)
model = SeqModel()
criterion = nn.MSELoss()
optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
for step in range(60):
    starts = torch.randint(0, len(wave) - 51, (32,))
    seq = torch.stack([wave[s : s + 51] for s in starts]).unsqueeze(-1)
    out = model(seq[:, :-1])
    loss = criterion(out, seq[:, 1:])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 10 == 0:
        print(step, loss.item())
"""


SCRIPTS = {
    "makemore_gru.py": MAKEMORE_GRU,
    "lstm_h0.py": LSTM_H0,
    "rezero.py": REZERO,
    "clamp_blocks.py": CLAMP_BLOCKS,
    "clamp_in_forward.py": CLAMP_IN_FORWARD,
    "seq2seq_attention.py": SEQ2SEQ,
    "rnn_explodes.py": RNN_EXPLODES,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    jobs = {}
    for name, text in SCRIPTS.items():
        folder = tmp_path_factory.mktemp(name.removesuffix(".py"))
        write(folder, name, text)
        jobs[name] = lambda folder=folder, name=name: td_run(folder, "run", name)
    return run_all(jobs)


def _flagged(result):
    return [f for f in result.findings()["findings"] if f["severity"] in ("error", "warning")]


@pytest.mark.parametrize("name", ["makemore_gru.py", "lstm_h0.py", "rezero.py"])
def test_zero_initialised_trained_operand_is_not_a_block(runs, name):
    r = runs[name]
    assert r.rc == 0, r
    assert "TD301" not in r.codes(), r.finding("TD301")
    assert _flagged(r) == [], _flagged(r)


def test_a_clamp_that_blocks_is_still_an_error_at_its_line(runs):
    r = runs["clamp_blocks.py"]
    f = r.finding("TD301")
    assert f["severity"] == "error"
    assert f["where"]["op"] == "clamp"
    assert (
        f["where"]["source"] == f"clamp_blocks.py:{line_of(r.cwd / 'clamp_blocks.py', '# CLAMP')}"
    )
    assert f["evidence"]["zeroed_fraction"] > 0.9


def test_a_clamp_in_the_models_own_loss_is_confirmed_on_a_second_walk(runs):
    r = runs["clamp_in_forward.py"]
    f = r.finding("TD301")
    assert f["severity"] == "error" and f["where"]["op"] == "clamp"
    assert "again on step 2" in f["cause"]


def test_attention_gradient_rising_from_zero_is_not_an_explosion(runs):
    r = runs["seq2seq_attention.py"]
    assert r.rc == 0, r
    assert "TD206" not in r.codes(), r.finding("TD206")
    assert _flagged(r) == [], _flagged(r)


def test_a_real_rnn_explosion_is_still_reported(runs):
    r = runs["rnn_explodes.py"]
    f = r.finding("TD206")
    assert f["severity"] == "error" and f["where"]["module"] in ("rnn", "fc")
    assert r.finding("TD210")["severity"] == "error"


# -- the walk itself, in process ------------------------------------------------------------


def _muls(loss):
    return [n for n in td.explain_gradients(loss).find("mul") if n.zeroed]


def test_walk_zero_start_state_rezero_and_adaln_zero_gate_are_trained_operands():
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    # a recurrent cell with a learned start state, zeros at init
    h0 = nn.Parameter(torch.zeros(1, 16))
    gate = nn.Linear(16, 16)
    r = torch.sigmoid(gate(x))
    (n,) = _muls((r * h0.expand(8, -1)).tanh().sum())
    assert n.verdict == ZERO_OPERAND and n.zeroed == 1.0 and n.trained_operand
    # ReZero: x + alpha * f(x), alpha = 0
    alpha, f = nn.Parameter(torch.zeros(1)), nn.Linear(16, 16)
    (n,) = _muls((x + alpha * f(x)).pow(2).sum())
    assert n.verdict == ZERO_OPERAND
    # adaLN-zero: a gate produced by a zero-initialised linear layer
    ada = nn.Linear(16, 16)
    nn.init.zeros_(ada.weight)
    nn.init.zeros_(ada.bias)
    (n,) = _muls((x + ada(x) * f(x)).pow(2).sum())
    assert n.verdict == ZERO_OPERAND


def test_walk_constant_zeros_and_zero_times_zero_still_block():
    torch.manual_seed(0)
    f = nn.Linear(16, 16)
    x = torch.randn(8, 16)
    weight = torch.full((8, 16), 2.5)  # a constant loss weight (no grad), 0 on 3/4 of it
    weight[:, :12] = 0.0
    (n,) = _muls((f(x) * weight).sum())
    assert n.verdict == BLOCKS and not n.trained_operand
    a, b = nn.Parameter(torch.zeros(8, 16)), nn.Parameter(torch.zeros(8, 16))
    (n,) = _muls((a * b + f(x)).sum())  # 0 x 0: neither side ever gets a gradient
    assert n.verdict == BLOCKS

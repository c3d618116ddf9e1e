"""Real reports of padding not ignored by a sequence loss (third batch): targets padded with
the pad token's id while the cross-entropy ignores another index (its default -100), so the
model is trained to predict padding. Each is written as the reporter's code (made runnable on
small synthetic data) and run unchanged under the zero-code `traindoctor run`, beside the
fixed twin (ignore_index = the pad id), which must stay silent (no error, no warning).

Measured at 8ef835d (before) and after this change (`traindoctor run`; load average 10-20 on
2 cores):
- saahiluppal/catr#12, `nn.CrossEntropyLoss()` on captions padded with [PAD] = 0 (48 steps):
  62% of the targets are padding. Before: missed (TD502 only). After: TD518 warning at the
  loss line, with the share, the pad value, the run lengths (10 to 19) and ignore_index=-100.
- lukas-blecher/LaTeX-OCR#305, x-transformers' AutoregressiveWrapper with pad_value=0 and
  ignore_index=-100 (120 steps): 43% padding. Before: missed. After: TD518 warning at the
  wrapper's F.cross_entropy line.
Both fixed twins (ignore_index = the pad id) are silent before and after. Not seen: targets
flattened with view(-1) before the loss (the rows are gone), left padding.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import fixed_twin, reported_batch, script_line, top3

pytestmark = pytest.mark.slow


# saahiluppal/catr#12 ("It seems like pad token is making a loss, too ... criterion =
# torch.nn.CrossEntropyLoss(ignore_index=config.pad_token_id)"): a captioning decoder trained
# with `criterion(outputs.permute(0, 2, 1), cap[:, 1:])`, captions padded with [PAD] = 0.
CAPTION_PAD_IN_LOSS = """
import torch
import torch.nn as nn

torch.manual_seed(0)
g = torch.Generator().manual_seed(4)
vocab_size, max_position_embeddings, pad_token_id = 40, 24, 0
n = 512
features = torch.randn(n, 16, generator=g)
lengths = torch.randint(4, 14, (n,), generator=g)
start = (features[:, :4].argmax(1) + 3)
caps = torch.zeros(n, max_position_embeddings, dtype=torch.long)
for i in range(n):
    L = int(lengths[i])
    caps[i, 0] = 1  # [START]
    caps[i, 1:L] = (start[i] + 3 * torch.arange(L - 1)) % (vocab_size - 3) + 3
    caps[i, L] = 2  # [END]


class Caption(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(16, 64)
        self.embed = nn.Embedding(vocab_size, 64, padding_idx=pad_token_id)
        self.decoder = nn.GRU(64, 64, batch_first=True)
        self.mlp = nn.Linear(64, vocab_size)

    def forward(self, samples, target):
        h0 = torch.tanh(self.backbone(samples)).unsqueeze(0)
        out, _ = self.decoder(self.embed(target), h0)
        return self.mlp(out)


model = Caption()
criterion = torch.nn.CrossEntropyLoss()  # LOSS
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
for epoch in range(3):
    perm = torch.randperm(n)
    for i in range(0, n, 32):
        idx = perm[i:i + 32]
        samples, cap = features[idx], caps[idx]
        outputs = model(samples, cap[:, :-1])
        loss = criterion(outputs.permute(0, 2, 1), cap[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
    print(epoch, loss.item())
"""

# lukas-blecher/LaTeX-OCR#305 ("Calculating cross_entropy loss does not change ignore_index
# parameter; the default value is -100, but [PAD] token's index = 0"): x-transformers'
# AutoregressiveWrapper with pad_value=0 and ignore_index left at -100, sequences of token ids
# padded with 0 to the batch's longest.
WRAPPER_IGNORE_INDEX_DEFAULT = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
g = torch.Generator().manual_seed(5)
num_tokens, max_seq_len = 32, 20


class TinyDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.token_emb = nn.Embedding(num_tokens, 48)
        self.pos_emb = nn.Embedding(max_seq_len, 48)
        layer = nn.TransformerEncoderLayer(48, 4, 96, dropout=0.0, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, 2)
        self.to_logits = nn.Linear(48, num_tokens)

    def forward(self, x, mask=None):
        t = x.shape[1]
        h = self.token_emb(x) + self.pos_emb(torch.arange(t))
        causal = torch.triu(torch.full((t, t), float('-inf')), diagonal=1)
        pad = ~mask if mask is not None else None
        return self.to_logits(self.layers(h, mask=causal, src_key_padding_mask=pad))


class AutoregressiveWrapper(nn.Module):
    def __init__(self, net, ignore_index=-100, pad_value=0):  # IGNORE
        super().__init__()
        self.pad_value = pad_value
        self.ignore_index = ignore_index
        self.net = net
        self.max_seq_len = net.max_seq_len

    def forward(self, x, **kwargs):
        xi = x[:, :-1]
        xo = x[:, 1:]
        mask = kwargs.get('mask', None)
        if mask is not None and mask.shape[1] == x.shape[1]:
            mask = mask[:, :-1]
            kwargs['mask'] = mask
        out = self.net(xi, **kwargs)
        loss = F.cross_entropy(out.transpose(1, 2), xo, ignore_index=self.ignore_index)
        return loss


def batch(bs=24):
    lengths = torch.randint(5, max_seq_len, (bs,), generator=g)
    seqs = torch.zeros(bs, int(lengths.max()), dtype=torch.long)
    mask = torch.zeros_like(seqs, dtype=torch.bool)
    for i, L in enumerate(lengths.tolist()):
        first = int(torch.randint(3, num_tokens, (1,), generator=g))
        seqs[i, :L] = (first + torch.arange(L)) % (num_tokens - 3) + 3
        seqs[i, 0] = 1
        seqs[i, L - 1] = 2
        mask[i, :L] = True
    return seqs, mask


model = AutoregressiveWrapper(TinyDecoder())
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for i in range(120):
    seq, mask = batch()
    loss = model(seq, mask=mask)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i % 20 == 0:
        print(i, loss.item())
"""


BUGGY = {
    "caption_pad_in_loss": CAPTION_PAD_IN_LOSS,
    "wrapper_ignore_index_default": WRAPPER_IGNORE_INDEX_DEFAULT,
}
HEALTHY = {
    "caption_pad_in_loss_fixed": fixed_twin(
        CAPTION_PAD_IN_LOSS,
        [
            (
                "torch.nn.CrossEntropyLoss()  # LOSS",
                "torch.nn.CrossEntropyLoss(ignore_index=pad_token_id)  # LOSS",
            )
        ],
    ),
    "wrapper_ignore_index_default_fixed": fixed_twin(
        WRAPPER_IGNORE_INDEX_DEFAULT,
        [("ignore_index=-100, pad_value=0):  # IGNORE", "ignore_index=0, pad_value=0):  # IGNORE")],
    ),
}


runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)


@pytest.mark.parametrize(
    ("name", "marker"),
    [
        ("caption_pad_in_loss", "loss = criterion(outputs.permute"),
        ("wrapper_ignore_index_default", "loss = F.cross_entropy(out.transpose"),
    ],
)
def test_padding_trained_as_tokens(runs, name, marker):
    r = runs[name]
    assert r.rc == 0, r
    f = top3(r, "TD518")
    assert f["where"]["source"] == script_line(r, marker)
    assert f["evidence"]["pad_value"] == 0 and f["evidence"]["ignore_index"] == -100
    assert "ignore_index=0" in f["fix"]

"""TD520 on hand-built loss-inputs timelines, and the probe's measurement on real graphs."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.probes.loss_inputs import _copied_ids
from traindoctor.testing import assert_fires, assert_silent

SEQ = {"fn": "cross_entropy", "classes": 50, "input_shape": [8, 50, 24], "target_shape": [8, 24]}


def _stats(same, nxt, causal, steps=(1, 2, 4)):
    return {
        s: {"ids_same": same, "ids_next": nxt, "causal_attn": causal, "loss": 3.0 / s}
        for s in steps
    }


def test_unshifted_targets_through_a_causal_attention_warn():
    f = assert_fires("TD520", site_timeline(SEQ, _stats(1.0, 0.03, 1.0)))
    assert f.severity.value == "warning"
    assert "copy its input" in f.cause and "ids[:, 1:]" in f.fix


def test_without_a_causal_attention_it_is_a_note():
    """An RNN LM and a sequence autoencoder read alike: said as info only."""
    f = assert_fires("TD520", site_timeline(SEQ, _stats(1.0, 0.03, 0.0)))
    assert f.severity.value == "info"


def test_silent_on_shifted_targets_masked_lm_and_constant_runs():
    assert_silent("TD520", site_timeline(SEQ, _stats(0.04, 1.0, 1.0)))  # shifted
    assert_silent("TD520", site_timeline(SEQ, _stats(0.1, 0.02, 0.0)))  # masked LM
    assert_silent("TD520", site_timeline(SEQ, _stats(1.0, 1.0, 1.0)))  # constant runs
    assert_silent("TD520", site_timeline(SEQ, _stats(1.0, 0.03, 1.0, steps=(1,))))  # once


class _LM(nn.Module):
    def __init__(self, causal):
        super().__init__()
        self.causal = causal
        self.emb = nn.Embedding(20, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 20)

    def forward(self, ids):
        h = self.emb(ids)
        n = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n) if self.causal else None
        return self.head(self.attn(h, h, h, attn_mask=mask, need_weights=False)[0])


def test_probe_reads_the_ids_and_the_causal_mask_from_the_graph():
    ids = torch.randint(0, 20, (4, 10), generator=torch.Generator().manual_seed(0))
    logits = _LM(causal=True)(ids).transpose(1, 2)
    out = _copied_ids(logits, ids, -100)
    assert out["ids_same"].item() == 1.0 and out["causal_attn"].item() == 1.0
    shifted = _copied_ids(logits[:, :, :-1], ids[:, 1:], -100)
    assert shifted == {}  # (4, 9) targets: no embedding read ids of that shape
    plain = _copied_ids(_LM(causal=False)(ids).transpose(1, 2), ids, -100)
    assert plain["causal_attn"].item() == 0.0
    F.cross_entropy(logits, ids).backward()  # the walk left the graph usable


def test_probe_compares_flattened_targets_too():
    """nanoGPT's `F.cross_entropy(logits.view(-1, V), targets.view(-1))`."""
    ids = torch.randint(0, 20, (4, 10), generator=torch.Generator().manual_seed(1))
    logits = _LM(causal=True)(ids)
    out = _copied_ids(logits.reshape(-1, 20), ids.reshape(-1), -100)
    assert out["ids_same"].item() == 1.0
    nxt = torch.roll(ids, -1, dims=1)
    shifted = _copied_ids(logits.reshape(-1, 20), nxt.reshape(-1), -100)
    assert shifted["ids_same"].item() < 0.5 and shifted["ids_next"].item() > 0.8


def test_probe_skips_embeddings_shifted_in_the_graph():
    """image-gpt (teddykoker/image-gpt) shifts the embeddings, not the ids:
    `cat([sos, tok(x)[:-1]])` under a causal mask, the loss on the unshifted ids. Position t
    reads token t-1 there, so its ids are not compared; a feature-dim cat still is."""
    ids = torch.randint(0, 20, (4, 10), generator=torch.Generator().manual_seed(2))
    lm = _LM(causal=True)
    h = lm.emb(ids)
    sos = torch.zeros(4, 1, 16, requires_grad=True)
    for shifted in (torch.cat([sos, h[:, :-1]], 1), F.pad(h, (0, 0, 1, 0))[:, :-1]):
        mask = nn.Transformer.generate_square_subsequent_mask(10)
        logits = lm.head(lm.attn(shifted, shifted, shifted, attn_mask=mask, need_weights=False)[0])
        assert _copied_ids(logits.transpose(1, 2), ids, -100) == {}
    wide = torch.cat([h, torch.zeros(4, 10, 4)], -1)[..., :16]  # features, not time
    out = _copied_ids(lm.head(wide).transpose(1, 2), ids, -100)
    assert out["ids_same"].item() == 1.0


def test_a_shifted_read_of_the_targets_is_the_next_token_read():
    """A seq2seq copy task: the encoder reads src (== the targets) at the same positions, the
    decoder reads the targets shifted on its embeddings; ids_next says the shift is there."""
    ids = torch.randint(0, 20, (4, 10), generator=torch.Generator().manual_seed(3))
    lm = _LM(causal=True)
    enc = lm.emb(ids)
    dec = torch.cat([torch.zeros(4, 1, 16), lm.emb(ids)[:, :-1]], 1)
    mask = nn.Transformer.generate_square_subsequent_mask(10)
    h = lm.attn(dec, enc, enc, need_weights=False)[0]
    h = lm.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
    out = _copied_ids(lm.head(h).transpose(1, 2), ids, -100)
    assert out["ids_same"].item() == 1.0 and out["ids_next"].item() == 1.0
    assert_silent("TD520", site_timeline(SEQ, _stats(1.0, 1.0, 1.0)))

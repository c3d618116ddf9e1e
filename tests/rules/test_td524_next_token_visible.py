"""TD524 on hand-built loss-inputs timelines, and the probe's experiment on real graphs."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.probes import next_token_leak
from traindoctor.probes.loss_inputs import _copied_ids
from traindoctor.testing import assert_fires, assert_silent

SEQ = {"fn": "cross_entropy", "classes": 50, "input_shape": [8, 50, 24], "target_shape": [8, 24]}


def _stats(share, dep, steps=(1, 2, 4), dim=1.0):
    return {
        s: {"nt_share": share, "nt_dep": dep, "nt_dim": dim, "nt_rows": 8.0, "nt_attn": 1.0}
        for s in steps
    }


def test_a_prediction_that_reads_its_target_is_an_error():
    f = assert_fires("TD524", site_timeline(SEQ, _stats(1.0, 0.2)))
    assert f.severity.value == "error"
    assert "not causal" in f.cause and "is_causal=True" in f.fix
    assert f.evidence["layout"] == "(batch, time)"
    f = assert_fires("TD524", site_timeline(SEQ, _stats(1.0, 0.2, dim=0.0)))
    assert f.evidence["layout"].startswith("sequence-first")


def test_silent_when_causal_or_targets_not_the_next_ids():
    assert_silent("TD524", site_timeline(SEQ, _stats(1.0, 0.0)))  # causal: exactly 0
    assert_silent("TD524", site_timeline(SEQ, _stats(0.5, 0.3)))  # not next-token targets
    assert_silent("TD524", site_timeline(SEQ, {1: {"ids_next": 1.0, "loss": 2.0}}))  # unmeasured


class _LM(nn.Module):
    def __init__(self, causal):
        super().__init__()
        torch.manual_seed(0)
        self.causal = causal
        self.emb = nn.Embedding(20, 16)
        self.head = nn.Linear(16, 20)

    def forward(self, ids):
        h = self.emb(ids)
        q = h.unsqueeze(1)
        o = F.scaled_dot_product_attention(q, q, q, is_causal=self.causal).squeeze(1)
        return self.head(h + o)


def _measure(model, ids, tgt):
    logits = model(ids)
    found = {}
    _copied_ids(logits.transpose(1, 2), tgt, -100, found)
    assert "unsafe" not in found
    return next_token_leak.measure(logits.transpose(1, 2), tgt, -100, found["nodes"]), logits


def test_the_experiment_reads_the_next_position_and_leaves_the_graph():
    ids = torch.randint(0, 20, (4, 12), generator=torch.Generator().manual_seed(0))
    tgt = torch.cat([ids[:, 1:], torch.full((4, 1), -100)], 1)
    out, logits = _measure(_LM(causal=False), ids, tgt)
    assert float(out["nt_share"]) == 1.0 and float(out["nt_dep"]) > 1e-3
    F.cross_entropy(logits.transpose(1, 2), tgt).backward()  # the graph is still there
    out, _ = _measure(_LM(causal=True), ids, tgt)
    assert float(out["nt_dep"]) == 0.0
    # Targets that are the ids at the same position: not measured (TD520's case).
    assert next_token_leak.measure(logits.transpose(1, 2), ids, -100, []) == {}


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


def test_no_experiment_under_python_functions_or_batch_norm():
    """An extra backward would call a Function's backward (reentrant checkpointing's among
    them) again, and batch norm mixes positions: the walk marks the graph unsafe."""
    ids = torch.randint(0, 20, (4, 12), generator=torch.Generator().manual_seed(0))
    tgt = torch.cat([ids[:, 1:], torch.full((4, 1), -100)], 1)
    emb, head = nn.Embedding(20, 16), nn.Linear(16, 20)
    for mid in (_Scale.apply, lambda h: nn.BatchNorm1d(16)(h.transpose(1, 2)).transpose(1, 2)):
        found = {}
        _copied_ids(head(mid(emb(ids))).transpose(1, 2), tgt, -100, found)
        assert found.get("unsafe") and found.get("nodes")


def test_padded_decoder_rows_and_label_smoothed_targets():
    """A seq2seq decoder's rows: input [BOS, y..., PAD], target [y..., EOS, PAD(ignored)]:
    each row's end token has padding after it. Left out of the share; the query is the last
    target equal to the next input (not the end token, whose next position is padding)."""
    from traindoctor.probes.loss_inputs import _smoothed_tokens

    y = torch.tensor([[5, 6, 7, 2, 0, 0], [8, 9, 4, 3, 6, 2]])  # 2 = EOS, 0 = PAD
    inputs = torch.cat([torch.ones(2, 1, dtype=torch.long), y[:, :-1]], 1).masked_fill(y == 0, 0)
    tgt = y.masked_fill(y == 0, -100)
    share, last = next_token_leak._queries(tgt, inputs, -100, 1, 0)
    assert float(share) == 1.0 and last.tolist() == [2, 4]
    # kl_div's (N, V) smoothed targets: their argmax, all-zero (pad) rows -100
    dist = torch.full((4, 10), 0.01)
    dist[torch.arange(4), torch.tensor([3, 1, 4, 1])] = 0.9
    dist[2] = 0
    hard = _smoothed_tokens("kl_div", torch.zeros(4, 10), dist)
    assert hard is None  # fewer than 8 rows: not a sequence batch
    hard = _smoothed_tokens("kl_div", torch.zeros(8, 10), dist.repeat(2, 1))
    assert hard.tolist() == [3, 1, -100, 1] * 2

"""TD524 next-token-visible."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import loss_went
from ._loss_inputs import loss_sites

NEXT_SHARE = 0.99  # share of the valid targets equal to the next position's id
MIN_DEP = 1e-4  # |dL_t/de_{t+1}| / (|dL_t/de_t| + |dL_t/de_{t+1}|): 0 exactly when causal


@rule(
    code="TD524",
    name="next-token-visible",
    severity=Severity.ERROR,
    summary="Next-token prediction whose prediction at a position reads the input at the next "
    "position, which holds its target (no causal mask): the loss falls by copying, and "
    "generation, which has no next token to read, fails.",
    requires=("loss_inputs.stats",),
    events=("loss_input",),
    priority=21,
)
def next_token_visible(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A `cross_entropy` / `nll_loss` (or a label-smoothed `kl_div`, its targets the rows'
    argmax) whose (batch, time) targets are the token ids an
    `nn.Embedding` of the same graph read, shifted by one (`targets[:, t] == ids[:, t + 1]`,
    or along dim 0 for sequence-first data), while the prediction at position t measurably
    depends on the embedding at position t + 1: the model sees the token it is asked to
    predict. Typically a transformer language model trained without a causal mask
    (`nn.TransformerEncoder` used as a decoder without `mask=`, `is_causal=False`, a
    hand-written attention without `masked_fill(tril == 0, -inf)`), or a bidirectional layer.

    ## Why it matters
    With the answer in its input, the model learns to copy it from the next position: the
    training and validation losses fall far below what the data allows, and generation,
    where the next token does not exist yet, produces garbage (pytorch/tutorials#2478: a
    perplexity of 2.9 and predictions that "never made any sense";
    alex-matton/causal-transformer-decoder#1; huggingface/transformers#48745: "the loss
    fell to almost zero within a few hundred steps on random tokens").

    ## How it is measured
    On the 1st, 2nd, 4th, ... measured call of each loss site (8 experiments at most, none
    after a leak is measured; on a GPU only with 4x the logits' bytes free), the
    loss-inputs probe walks the loss input's autograd graph to the `EmbeddingBackward0`
    nodes and compares their saved ids with the targets, along time and along dim 0. When at
    least 99% of the valid targets are the next position's id (each row's last valid target,
    an end token followed by padding, left out), one experiment on the step's
    own graph, before the user's backward: the gradient of the prediction at one position
    per sequence (its last target equal to the next id; a random direction over the
    classes) with respect to the embedding's output, `torch.autograd.grad(...,
    retain_graph=True)` on a `GradientEdge` of the embedding node. The measure is the
    gradient's norm at the next position over its norm at the own position plus the next:
    exactly 0 in a causal model. Every embedding read in that layout must show it (the
    decoder of an encoder-decoder reading the same ids is causal). Nothing the training reads
    changes (no `.grad` is written, the graph is kept, the RNG state is put back); the
    experiment is not run under module backward hooks, autograd Functions written in Python
    (activation checkpointing), batch norm, DDP or a compiled region.

    ## Example
    ```python
    src = self.embedding(src) * math.sqrt(self.d_model)
    output = self.transformer_encoder(src)             # no mask: every position sees all
    loss = criterion(output.view(-1, ntokens), targets)  # targets: the inputs shifted by one
    ```

    ## Fix
    ```python
    mask = nn.Transformer.generate_square_subsequent_mask(src.size(0))
    output = self.transformer_encoder(src, mask, is_causal=True)
    # or F.scaled_dot_product_attention(q, k, v, is_causal=True), or
    # att = att.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf")) before softmax
    ```

    ## Known false positives
    None known where the targets are the next ids: a prefix-LM is measured at the last
    valid target, in its causal part; an encoder-decoder whose encoder also reads the
    decoder's ids is silent while its decoder is causal. Masked language models and
    classifiers are not measured (their targets are not the next ids).
    """
    for site in loss_sites(tl).values():
        deps = [(s, v) for s, v in site.values("nt_dep") if v == v]
        if not deps:
            continue
        shares = [v for _, v in site.values("nt_share")]
        if not shares or min(shares) < NEXT_SHARE:
            continue
        leaked = [(s, v) for s, v in deps if v >= MIN_DEP]
        if not leaked:
            continue
        step, dep = max(leaked, key=lambda sv: sv[1])
        dims = [v for _, v in site.values("nt_dim")]
        seq_first = bool(dims) and all(v < 0.5 for v in dims)
        attn = any(v >= 0.5 for _, v in site.values("nt_attn"))
        rows = max((v for _, v in site.values("nt_rows")), default=0.0)
        losses = site.losses()
        went = loss_went(losses)
        shift = "`targets[t] == ids[t + 1]`" if seq_first else "`targets[:, t] == ids[:, t + 1]`"
        what = (
            "an attention of the model is not causal"
            if attn
            else "a layer of the model reads later positions (bidirectional, or not causal)"
        )
        yield tl.finding(
            title=f"`{site.fn}` at {site.source}: the prediction at each position reads the "
            "next token, which is its target (no causal mask)",
            step=leaked[0][0],
            evidence={
                "loss_fn": site.fn,
                "share_targets_equal_next_ids": min(shares),
                "next_position_dependence": dep,
                "dependence_step": step,
                "measured_calls": len(deps),
                "leaking_calls": len(leaked),
                "sequences_queried": int(rows),
                "layout": "sequence-first (time, batch)" if seq_first else "(batch, time)",
                "attention_in_graph": attn,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
            },
            where=Where(op=site.fn, source=site.source),
            cause=f"{min(shares):.1%} of the targets are the id an nn.Embedding read at the "
            f"next position ({shift}), and the gradient of the prediction at a position with "
            "respect to that embedding's output is not zero at the next position "
            f"({dep:.3g} of the own and next positions' total, measured at step {step}; "
            f"exactly 0 in a causal model): {what}, so each position can copy its target" + went,
            fix="mask the later positions in every self-attention: `mask=nn.Transformer."
            "generate_square_subsequent_mask(T)` with `is_causal=True` for "
            "nn.TransformerEncoder(Layer) (`tgt_mask=` for nn.TransformerDecoder), "
            "`F.scaled_dot_product_attention(q, k, v, is_causal=True)`, or "
            '`att.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))` before the '
            "softmax; a recurrent or convolutional model must be unidirectional / causal",
            confidence=0.9,
        )

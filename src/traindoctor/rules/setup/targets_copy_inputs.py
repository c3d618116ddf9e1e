"""TD520 targets-copy-inputs."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import loss_went
from ._loss_inputs import loss_sites

SAME = 0.999  # share of the valid targets equal to the id at their own position
MIN_MEASURED = 2  # measured calls (1st, 2nd, 4th, ... of the site) before a verdict


@rule(
    code="TD520",
    name="targets-copy-inputs",
    severity=Severity.WARNING,
    summary="Sequence targets that are the token ids the model reads at the same positions "
    "(labels not shifted for next-token prediction): the model learns to copy its input.",
    requires=("loss_inputs.stats",),
    events=("loss_input",),
    priority=23,
)
def targets_copy_inputs(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A `cross_entropy` / `nll_loss` over (batch, time) class targets that are, position for
    position, the token ids an `nn.Embedding` of the same graph read (every valid target, on
    every measured call), and not the next position's ids. A warning when an attention of
    that graph is causal (`is_causal=True`, or a mask over the strict upper triangle): each
    position then sees the very token it is asked to predict. Without a causal attention
    measured (an RNN, a hand-written masked softmax) it is a note: a sequence autoencoder
    legitimately reconstructs its input.

    ## Why it matters
    Next-token prediction trains position t on token t+1. With the targets not shifted, the
    model is trained to output the token it reads at t: the loss falls to ~0 within a few
    hundred steps, the run looks excellent, and generation produces garbage (or repeats the
    prompt), because nothing about the next token was learnt.

    ## How it is measured
    On the 1st, 2nd, 4th, 8th, ... call of each loss site, the loss-inputs probe walks the
    autograd graph of the loss input back to its `EmbeddingBackward0` nodes and compares the
    saved indices (the ids the embedding read) with the targets: the share equal at the same
    position and at the next one (ignore_index masked); the same walk reads whether a
    scaled-dot-product attention node was causal. An embedding reached through a cat, roll
    or pad off the feature dim may be shifted along time (image-gpt's `cat([sos,
    tok(x)[:-1]])`, a decoder's teacher forcing written on the embeddings): its ids are not
    compared at the same position, and equal to the targets they count as the next-token
    read (a seq2seq copy task's decoder), so the finding stays silent. Ids read over more
    positions than the targets cover (a BOS token prepended, `cat([bos, x])`) are compared at
    the positions a slice of the logits along time keeps (`logits[:, 1:]` keeps 1..T): one
    slice of that length, else nothing is compared.

    ## Example
    ```python
    logits = transformer(x=latent)                    # causal decoder over the tokens
    loss = ce_loss(logits.transpose(1, 2), latent)    # token N predicted from tokens 0..N
    ```

    ## Fix
    ```python
    loss = ce_loss(logits[:, :, :-1], latent[:, 1:])  # position t predicts token t+1
    ```

    ## Known false positives
    A sequence autoencoder (or a denoiser given its clean input) reconstructs the ids it
    reads by design: without a causal attention this is only a note. A masked language model
    replaces the targets' ids in its input (or ignores the unmasked positions), so its
    targets never equal its input everywhere.
    """
    for site in loss_sites(tl).values():
        same = site.values("ids_same")
        if len(same) < MIN_MEASURED or any(v < SAME for _, v in same):
            continue
        nxt = [v for _, v in site.values("ids_next")]
        if nxt and max(nxt) >= 0.5:
            continue  # constant runs: equal to the next id too, nothing told apart
        causal = any(v >= 0.5 for _, v in site.values("causal_attn"))
        offsets = [v for _, v in site.values("ids_offset")]
        cut = (
            f" (the logits cut to the targets' length from position {offsets[0]:.0f} on, "
            "beside ids read over more positions: a token prepended to the inputs)"
            if offsets and offsets[0] > 0
            else ""
        )
        losses = site.losses()
        went = loss_went(losses)
        shape = site.facts.get("target_shape")
        seen = (
            "through a causal attention, so each position sees the token it is asked for"
            if causal
            else "(no causal attention was measured: a sequence autoencoder does this by design)"
        )
        yield tl.finding(
            title=f"`{site.fn}` at {site.source}: the (batch, time) targets"
            f"{f' {tuple(shape)}' if shape else ''} are the token ids the model reads at the "
            "same positions (not shifted by one)",
            severity=Severity.WARNING if causal else Severity.INFO,
            step=same[0][0],
            evidence={
                "loss_fn": site.fn,
                "target_shape": shape,
                "share_equal_to_input_ids": min(v for _, v in same),
                "share_equal_to_next_ids": max(nxt) if nxt else None,
                "measured_calls": len(same),
                "causal_attention": causal,
                "ids_offset": offsets[0] if offsets else None,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
            },
            where=Where(op=site.fn, source=site.source),
            cause=f"{min(v for _, v in same):.1%} of the targets equal the id an nn.Embedding "
            f"read at the same position{cut} on every measured call, {seen}: the model is trained "
            "to copy its input, not to predict the next token" + went,
            fix="shift the targets against the predictions: `loss = ce(logits[:, :-1], "
            "ids[:, 1:])` (logits (B, T, C)) or `ce(logits[:, :, :-1], ids[:, 1:])` (logits "
            "(B, C, T)); a Hugging Face causal LM shifts `labels=input_ids` itself",
            confidence=0.9 if causal else 0.5,
        )

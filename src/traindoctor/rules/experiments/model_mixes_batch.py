"""TD704 model-mixes-batch."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._experiments import experiment


@rule(
    code="TD704",
    name="model-mixes-batch",
    severity=Severity.WARNING,
    summary="Batch independence on a copy: the gradient of example i's output with respect to "
    "example j's input (j != i), BatchNorm and Dropout in eval mode; non-zero names the op (a "
    "warning where the mix cannot be the model's design, else info).",
    events=("experiment",),
    priority=10,
)
def model_mixes_batch(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Karpathy's batch-independence check: with BatchNorm (and Dropout) in eval mode on a copy,
    example i's output must not depend on example j's input. A non-zero d output[i] /
    d input[j] means the model mixes examples: a `view`/`reshape` across the batch dim
    (`x.view(-1, B)` instead of `x.view(B, -1)`), a `transpose` before it, a softmax or a
    normalization over dim 0, an RNN fed `(B, T, D)` without `batch_first=True` (it runs along
    the batch). The finding names the autograd op where the mixing starts and its line.

    ## Why it matters
    Each example's prediction then depends on the others in its batch: training fits batch
    statistics, evaluation depends on the batch size and order, and nothing crashes.

    ## How it is measured
    At close, on a deep copy from the initial weights: one forward of the captured batch with
    the input requiring grad (anomaly mode on, to keep each op's line), then backward from
    output[B // 2].sum(); a hook on every autograd node finds the first one (backward order)
    that sends gradient into another example's rows. Mixing: another example's input gradient
    above 1e-6 of the example's own. Floating-point positional inputs only (token ids: not
    measured); the output's dim 0 must be the batch.

    ## Example
    ```python
    out, _ = self.lstm(x)          # x is (B, T, D); nn.LSTM(batch_first=False) reads (T, B, D)
    # TD704: example 16's output depends on 16 other examples (op MkldnnRnnLayerBackward0)
    ```

    ## Fix
    ```python
    self.lstm = nn.LSTM(d, h, batch_first=True)   # (B, T, D) inputs
    x = x.reshape(x.size(0), -1)                  # flatten each example, not the batch
    ```

    The check is on the model's output, never on the loss: a contrastive loss that compares
    the examples of a batch by design (InfoNCE, triplet mining) does not count.

    ## Severity
    A warning only where the mix cannot be the model's design: the op is one that moves values
    across dim 0 by mistake (an RNN run along it, a softmax over it, a view, reshape, transpose
    or permute across it), it still mixes with the whole copy in eval mode (a hand-written
    batch normalization mixes in train mode only), the model's only tensor input is the one checked, its output is one
    prediction per example (`(B,)` or `(B, C)`, no other dim of size B) and the loss reads the
    same B rows. Everything else is info: a matmul or a reduction over the batch (a graph
    network's message passing over a full graph, a hand-written normalization, an in-batch
    similarity `(B, B)` inside the model), a model with other tensor inputs (an adjacency,
    edges, masks), a sequence-first output (`(T, B, ...)`: dim 0 is time, and an RNN or
    attention along it is what it is for).

    ## Known false positives
    Models that mix the batch on purpose (attention across the batch, in-batch negatives
    inside the model) are reported too, at info: then it is what they do. A model fed
    sequence-first `(T, B)` inputs whose output is `(T, C)`-shaped reads like a batch-first one.
    """
    e = experiment(tl, "batch_independence")
    if e is None or e.get("verdict") in ("error", None, "not_measured"):
        return
    facts = e.get("facts") or {}
    if e.get("verdict") == "independent":
        yield tl.finding(
            title=f"Examples are independent: example {facts.get('example')}'s output has no "
            f"gradient into the {int(facts.get('batch', 1)) - 1} other inputs of the batch",
            step=e.get("step"),
            evidence={**facts, "seconds": e.get("seconds")},
            fix="nothing to fix: each example's output depends on its own input only",
            severity=Severity.INFO,
        )
        return
    op = facts.get("op")
    at = f" (op {op}" + (f" at {facts['op_source']}" if facts.get("op_source") else "") + ")"
    design = by_design(facts)
    cause = (
        "an op moves values across the batch dim (a view/reshape/transpose across it, a "
        "reduction or softmax over dim 0, an RNN run along the batch)"
    )
    if design:
        cause += f"; it may be the model's design: {design}"
    yield tl.finding(
        title=f"The model mixes the examples of a batch: example {facts.get('example')}'s output "
        f"depends on {facts.get('examples_mixed_in')} other examples' inputs" + (at if op else ""),
        step=e.get("step"),
        evidence={**facts, "seconds": e.get("seconds")},
        where=Where(op=op, source=facts.get("op_source") or e.get("source")),
        cause=cause,
        fix="keep dim 0 the batch: x.reshape(x.size(0), -1), softmax(dim=-1), "
        "nn.LSTM(batch_first=True) for (B, T, D) inputs"
        + ("; nothing to fix if mixing the batch is what the model is for" if design else ""),
        severity=Severity.INFO if design else Severity.WARNING,
    )


# Autograd ops that move values across dim 0 by mistake (their names, or a part of them).
_MISTAKES = (
    "Rnn",
    "Lstm",
    "Gru",
    "Softmax",
    "View",
    "Reshape",
    "Transpose",
    "TBackward",
    "Permute",
)


def by_design(facts: dict) -> str:
    """Why the mix may be what the model is for ("" when it cannot be: a warning)."""
    n = facts.get("batch")
    op = str(facts.get("op") or "")
    shape = facts.get("output_shape")
    loss_shape = facts.get("loss_input_shape")
    if not op:
        return "the op that mixes could not be named"
    if not any(m in op for m in _MISTAKES):
        return f"{op} (a matmul, an index or a reduction) mixes examples in models built to"
    if facts.get("mixes_in_eval") is not True:
        return (
            "with the whole model in eval mode the examples are independent (a hand-written "
            "batch normalization?)"
            if facts.get("mixes_in_eval") is False
            else "whether it mixes with the whole model in eval mode was not measured"
        )
    if shape is None or loss_shape is None or facts.get("other_tensor_inputs") is None:
        return "the output's shape was not recorded"
    if facts["other_tensor_inputs"]:
        return "the model takes other tensor inputs (an adjacency, edges, a mask)"
    if len(shape) > 2 or any(int(d) == n for d in shape[1:]):
        return f"the output {tuple(shape)} is not one prediction per example (sequence-first?)"
    if not loss_shape or int(loss_shape[0]) != n:
        return f"the loss reads {tuple(loss_shape)}, not the {n} rows of the batch"
    return ""

"""TD523 sequence-dim-is-batch."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import loss_sites


@rule(
    code="TD523",
    name="sequence-dim-is-batch",
    severity=Severity.WARNING,
    summary="an nn.LSTM/GRU/RNN or nn.MultiheadAttention built without batch_first=True fed "
    "(batch, time, features): it runs over the examples of the batch, mixing them, and treats "
    "time as the batch.",
    requires=("loss_inputs.stats",),
    events=("seq_layer_call", "loss_input"),
    priority=22,
)
def sequence_dim_is_batch(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    An `nn.LSTM`, `nn.GRU`, `nn.RNN` or `nn.MultiheadAttention` (also inside
    `nn.TransformerEncoderLayer`) built with the default `batch_first=False`, which reads its
    input as (time, batch, features), given a (batch, time, features) tensor: the loss's
    predictions are one per index of the layer's dim 0 (its time) and not of its dim 1 (its
    batch).

    ## Why it matters
    The recurrence (or the attention) then runs along the batch: example i's output depends on
    the examples before it (or all the others), and the real time steps are treated as
    independent sequences. Nothing errors, the shapes all fit, and the model trains on the
    wrong structure (yunjey/pytorch-tutorial#196; Exorust/TorchLeet#5: "high training loss and
    test error"; IBM/TabFormer#14). Measured: an LSTM classifier of 28-step sequences fed
    (batch, time, features) reaches 0.59 test accuracy against 0.99 with `batch_first=True`.

    ## How it is measured
    A forward hook on each sequence-first RNN/attention module records its input's shape on
    trained calls (once per shape), with the leading size of the watched model's input; the
    loss-inputs probe records the shape of each training loss's prediction. It fires when a
    layer's input is (A, B, features) with B > 1 and A != B, the model's input also leads
    with A, and a loss's prediction of the same step has A rows, (A,) or (A, C) with C != B:
    one prediction per index of what the layer takes for time, which is the model's batch.
    A sequence-first model that predicts per time step, (T, B) against (T, B) targets, keeps
    the layer's batch in its prediction and is not reported, nor one whose batch size equals
    its sequence length (nothing tells them apart; its smaller last batch is compared with
    that batch's prediction only), nor a layer whose model is given B examples (DETR's
    decoder reads N object queries (N, B, D) from B images; its matched boxes can number N).

    ## Example
    ```python
    self.lstm = nn.LSTM(input_size, hidden_size, num_layers)     # batch_first=False
    out, _ = self.lstm(x)                                         # x: (batch, seq, feature)
    out = self.fc(out[:, -1, :])
    ```

    ## Fix
    ```python
    self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
    # or pass x.transpose(0, 1) and read the output (seq, batch, hidden) accordingly
    ```

    ## Known false positives
    A layer over the batch on purpose (BatchFormer attends across the examples) is fed
    (batch, 1, features): B = 1 is not judged. Otherwise none known.
    """
    calls: dict[str, list[dict]] = {}  # module -> its judged calls, first shape first
    same: dict[tuple[int, ...], list[str]] = {}  # layer input shape -> the modules fed it
    for e in tl.events("seq_layer_call"):
        shape = e.get("shape") or []
        if len(shape) == 3 and shape[1] > 1 and shape[0] != shape[1]:
            # The watched model's input leads with the layer's dim 0: that dim holds the
            # examples the model was given. Images (B, C, H, W) whose features reach the layer
            # as (tokens, B, D) (DETR's queries) lead with the layer's batch: not judged, nor
            # a call whose model input is not known.
            if e.get("model_input_lead") != shape[0]:
                continue
            module = str(e.get("module"))
            modules = same.setdefault(tuple(shape), [])
            if module not in modules:
                modules.append(module)
            if len(modules) == 1:
                calls.setdefault(module, []).append(e)  # one finding per input shape
    if not calls:
        return
    preds: dict[int, list] = {}  # step -> the loss predictions first recorded there
    for site in loss_sites(tl).values():
        for e in site.events:
            shape = e.get("input_shape") or []
            if len(shape) in (1, 2):
                preds.setdefault(e.get("step"), []).append((site, e, shape))
    for module, seen in calls.items():
        # A prediction is compared with the layer's input of its own step: a shape recorded
        # on another step (the last, smaller batch of a model whose batch size equals its
        # sequence length: (32, 20, F) against the (32, C) of a full batch) is another batch.
        hit = next(
            (
                (call, site, e, shape)
                for call in seen
                for site, e, shape in preds.get(call.get("step"), ())
                if shape[0] == call["shape"][0]
                and (len(shape) == 1 or shape[1] != call["shape"][1])
            ),
            None,
        )
        if hit is None:
            continue
        call, site, event, shape = hit
        a, b = call["shape"][0], call["shape"][1]
        cls = call.get("cls") or "the layer"
        others = same[tuple(call["shape"])][1:]
        also = (
            f" (and {len(others)} more layer(s) fed the same: {', '.join(others[:3])})"
            if others
            else ""
        )
        yield tl.finding(
            title=f"`{module}` ({cls}, batch_first=False) reads its {tuple(call['shape'])} input "
            f"as (time={a}, batch={b}, ...), but the loss at {site.source} predicts {a} rows: "
            "it runs over the examples of the batch",
            step=call.get("step"),
            evidence={
                "module": module,
                "cls": cls,
                "layer_input_shape": call["shape"],
                "loss_fn": site.fn,
                "loss_input_shape": shape,
                "loss_source": site.source,
                "same_input_layers": others,
            },
            where=Where(module=module, source=site.source),
            cause=f"`{module}` was built without batch_first=True, so it takes dim 0 of its "
            f"input ({a}) for time and dim 1 ({b}) for the batch; the loss gets one prediction "
            f"per index of dim 0 ({tuple(shape)}), so dim 0 holds the examples. The "
            "recurrence/attention runs across the examples of each batch (each output mixes "
            f"other examples) and the real time steps are treated as separate sequences{also}",
            fix=f"build `{module}` with batch_first=True (`nn.{cls}(..., batch_first=True)`, "
            "or the TransformerEncoderLayer around it), or transpose its input to "
            "(time, batch, features) with x.transpose(0, 1) and its output back",
            confidence=0.8,
        )

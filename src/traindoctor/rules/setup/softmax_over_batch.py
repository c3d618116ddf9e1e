"""TD519 softmax-over-batch."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule


@rule(
    code="TD519",
    name="softmax-over-batch",
    severity=Severity.WARNING,
    summary="An nn.Softmax(dim=0) written for one unbatched vector normalizes over the batch "
    "when the same model is trained on batches.",
    requires=(),
    events=("softmax_call",),
    priority=24,
)
def softmax_over_batch(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    An `nn.Softmax(dim=0)` (or `LogSoftmax`, `Softmin`) called both on 1-D inputs while the
    model's own input was 1-D (one unbatched example: dim 0 is its features, the softmax is
    right) and, with gradient, on inputs of 2 or more dims whose dim 0 has the size of the
    model input's batch (dim 0 is the batch: each output column sums to 1 over the examples).

    ## Why it matters
    A policy or classifier written and tested on one state at a time (`model(state)` gives
    action probabilities that sum to 1) is trained on the episode's states at once
    (`model(states)`): the batched probabilities are normalized across the states instead of
    across the actions, so the loss trains something else than the policy that acts, each
    example's output depends on the others of its batch, and the run does not learn (REINFORCE
    on CartPole stuck at short episodes).

    ## How it is measured
    A forward hook on each softmax module built with `dim=0` records the first call at each
    input rank, with the rank and leading size of the watched model's input at that call (a
    forward pre-hook on the model), and whether grad was enabled. Host metadata only.

    ## Example
    ```python
    model = nn.Sequential(nn.Linear(4, 150), nn.LeakyReLU(), nn.Linear(150, 2), nn.Softmax(dim=0))
    act_prob = model(torch.from_numpy(state).float())        # (2,): over the actions
    pred_batch = model(state_batch)                           # (T, 2): over the T states
    ```

    ## Fix
    ```python
    nn.Softmax(dim=-1)   # the last dim: the actions/classes, batched or not
    ```

    ## Known false positives
    None known: a model whose unbatched input is 1-D and whose batched input puts the batch
    first (torch's convention) has its batch where dim 0 of the softmax is. A sequence-first
    model (unbatched input (T, E)) is not judged, nor a batched call whose last dim is not
    the unbatched vector's length (a time-first model over 1-D token ids: (T,) and (T, B),
    over time both times).
    """
    calls: dict[str, list[dict]] = {}
    for e in tl.events("softmax_call"):
        calls.setdefault(str(e.get("module")), []).append(e)
    for module, seen in calls.items():
        single = next(
            (e for e in seen if len(e.get("shape") or []) == 1 and e.get("model_input_rank") == 1),
            None,
        )
        batched = next(
            (
                e
                for e in seen
                if len(e.get("shape") or []) >= 2
                and e.get("grad")
                and (e.get("model_input_rank") or 0) >= 2
                and (e.get("shape") or [0])[0] == e.get("model_input_lead")
                # A stack of the unbatched vectors: its last dim is theirs. A time-first
                # model (tokens (T,) unbatched, (T, B) batched) softmaxes (T,) and (T, B)
                # over time both times: its last dim is the batch.
                and single is not None
                and (e.get("shape") or [0])[-1] == (single.get("shape") or [None])[0]
            ),
            None,
        )
        if single is None or batched is None:
            continue
        cls = single.get("cls") or "Softmax"
        one, many = tuple(single["shape"]), tuple(batched["shape"])
        yield tl.finding(
            title=f"`{module}` {cls}(dim=0) normalizes the {one[0]} outputs of one example "
            f"{one} but the batch of {many[0]} examples {many} in training",
            step=batched.get("step") or single.get("step"),
            evidence={
                "module": module,
                "unbatched_shape": list(one),
                "batched_shape": list(many),
                "unbatched_step": single.get("step"),
                "batched_step": batched.get("step"),
            },
            where=Where(module=module),
            cause=f"{cls}(dim=0) was called on one example's {one[0]} outputs (the model's "
            f"input 1-D), where dim 0 is the classes or actions, and with gradient on a batch "
            f"{many} whose dim 0 is the {many[0]} examples of the model's input: there every "
            "output column sums to 1 over the batch, not over the classes, so what is trained "
            "is not what the model outputs for one example, and each example's output depends "
            "on the others",
            fix=f"build it with dim=-1 (nn.{cls}(dim=-1)): the last dim is the classes whether "
            "the input is batched or not",
            severity=Severity.WARNING,
            confidence=0.8,
        )

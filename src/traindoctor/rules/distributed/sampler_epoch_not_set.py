"""TD605 sampler-epoch-not-set."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule


@rule(
    code="TD605",
    name="sampler-epoch-not-set",
    severity=Severity.WARNING,
    summary="A shuffling DistributedSampler whose set_epoch is never called: every epoch "
    "repeats the same order.",
    requires=("ranks.sampler", "data.fp"),
    events=("data_loader",),
    priority=25,
)
def sampler_epoch_not_set(tl: TimelineView, *, min_repeats: int = 1) -> Iterator[Finding]:
    """
    ## What it detects
    A DataLoader with a `DistributedSampler(shuffle=True)` served more than one epoch while
    its `epoch` never changed: `sampler.set_epoch(epoch)` is not called, so the sampler
    shuffles with the same seed every epoch and every epoch replays the first one's order.
    Real reports: pytorch/pytorch#31771 (https://github.com/pytorch/pytorch/issues/31771:
    "each epoch samples the data in the same order"), cszn/KAIR#106
    (https://github.com/cszn/KAIR/pull/106: the fix, "same data order in each epoch").

    ## Why it matters
    The point of shuffling is lost: the batches, their composition and their order are the
    same every epoch, so the model sees the same sequence of updates (and the same last
    batches before each evaluation). Convergence is slower and the model can fit the order.

    ## How it is measured
    Each rank (in a job of more than one process) reads, when each step opens, the state of
    the DistributedSamplers of the DataLoaders the script iterated (seen through the data
    probe's DataLoader listener, nothing patched): `epoch`, `shuffle`, batches per epoch. A
    sampler with `shuffle=True` whose `epoch` kept one value over more steps than it has
    batches, on a rank whose own training batches repeated bit for bit (the data probe's
    batch fingerprints, at least `min_repeats` repeated batch), is reported. A shuffled epoch
    repeats no batch of an earlier one (the fingerprint's weighted sum depends on each
    sample's place in the batch), so the repeat is the order replayed.

    ## Example
    ```python
    sampler = DistributedSampler(dataset, shuffle=True)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    for epoch in range(epochs):
        for x, y in loader:              # the same order every epoch
            ...
    ```

    ## Fix
    ```python
    for epoch in range(epochs):
        sampler.set_epoch(epoch)         # before iterating the loader
        for x, y in loader:
            ...
    ```

    ## Known false positives
    A loader that is not consumed one batch per step (several loaders in turn) whose epoch is
    meant to stay fixed is reported only if its batches also repeat.
    """
    rows = tl.series("ranks.sampler")
    if not rows:
        return
    seen: dict[str, dict[str, Any]] = {}
    for step, loaders in rows:
        for name, state in (loaders or {}).items():
            if not isinstance(state, dict):
                continue
            s = seen.setdefault(name, {"first": step, "epochs": set(), "state": state})
            s["epochs"].add(state.get("epoch"))
            s["state"] = state
    repeats = _repeats(tl)
    last = tl.last_step
    for name, s in sorted(seen.items()):
        state = s["state"]
        batches = state.get("batches")
        if not state.get("shuffle") or len(s["epochs"]) != 1 or not isinstance(batches, int):
            continue
        span = last - s["first"] + 2  # steps since before the first record (seen at a step's open)
        if batches <= 0 or span <= batches or len(repeats) < min_repeats:
            continue
        first, again = repeats[0]
        epoch = next(iter(s["epochs"]))
        # The user's name for the loader, from the data probe's description of it.
        named = [
            str(e.get("name"))
            for e in tl.events("data_loader")
            if e.get("sampler") == "DistributedSampler"
            and e.get("dataset_type") == state.get("dataset")
            and e.get("name") not in (None, "", "DataLoader")  # "DataLoader": no name found
        ]
        if named:
            name = f"`{named[0]}`"
        yield tl.finding(
            title=(
                f"DistributedSampler of {name} ({state.get('dataset')}) shuffles with epoch "
                f"{epoch} for {span} steps ({batches} batches an epoch): set_epoch is never "
                f"called, and the batch of step {first} came again at step {again}"
            ),
            step=again,
            evidence={
                "loader": name.strip("`"),
                "dataset": state.get("dataset"),
                "epoch": epoch,
                "shuffle": True,
                "seed": state.get("seed"),
                "batches_per_epoch": batches,
                "steps_seen": span,
                "repeated_batches": [[a, b] for a, b in repeats[:10]],
            },
            where=Where(op="DistributedSampler"),
            cause=(
                "DistributedSampler shuffles with seed + epoch; its epoch never changes, so "
                "every epoch is drawn in the first epoch's order"
            ),
            fix="call sampler.set_epoch(epoch) at the start of every epoch, before iterating",
        )


def _repeats(tl: TimelineView) -> list[tuple[int, int]]:
    """(first step, later step) of training batches whose fingerprints are bit-identical."""
    first_at: dict[tuple, int] = {}
    out = []
    for step, fp in tl.series("data.fp"):
        if not isinstance(fp, dict) or not fp:
            continue
        key = tuple(
            (k, "nan" if isinstance(v, float) and math.isnan(v) else v)
            for k, v in sorted(fp.items())
        )
        if key in first_at:
            out.append((first_at[key], step))
        else:
            first_at[key] = step
    return out

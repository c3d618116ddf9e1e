"""TD604 data-not-sharded."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule


@rule(
    code="TD604",
    name="data-not-sharded",
    severity=Severity.WARNING,
    summary="Ranks train on identical batches: the data is not sharded across the job.",
    requires=("job.data_fp", "job.ranks", "job.ddp", "job.loader"),
    priority=20,
)
def data_not_sharded(
    tl: TimelineView, *, min_steps: int = 4, share: float = 0.9
) -> Iterator[Finding]:
    """
    ## What it detects
    Two or more ranks of a data-parallel job fed their model the same batches, step after
    step: a DataLoader without a `DistributedSampler` (or with `shuffle=True` and the same
    seed on every rank), a dataset that ignores the rank. Real reports: coqui-ai/Trainer#144
    (https://github.com/coqui-ai/Trainer/issues/144: "each device gets the same data"),
    innnky/so-vits-svc#70 (https://github.com/innnky/so-vits-svc/issues/70: no speed-up on 3
    GPUs until a DistributedSampler was added).

    ## Why it matters
    The job pays N GPUs to compute the same gradient N times: the all-reduced gradient is one
    rank's, the effective batch is one rank's batch, and an epoch takes as long as on one GPU
    (or the learning rate, scaled for N times the batch, is N times too large).

    ## How it is measured
    Each rank's data probe fingerprints the step's first training batch (sum, sum of
    squares, a weighted sum with fixed weights the same on every rank, min and max of each
    input; every step up to 32, then sampled steps). The merge lines the ranks' fingerprints
    up by step. In a job with a data-parallel wrapper (DDP or FSDP) on the watched model (a
    tensor- or pipeline-parallel group shares its inputs by design), a pair of ranks whose
    fingerprints are equal, bit for bit, on at least
    `share` (90%) of at least `min_steps` (4) common steps, with at least two different
    batches among them (the data changes), trains on the same data. Ranks with different
    data differ on almost every step (the weighted sum depends on every value and its place).
    The finding names the user's line that built the DataLoader the training loop iterates
    (read from the source around the loop, on the lowest of those ranks), when there is one.

    ## Example
    ```python
    loader = DataLoader(dataset, batch_size=32, shuffle=True)   # every rank: the same order
    model = DDP(net)
    ```

    ## Fix
    ```python
    sampler = DistributedSampler(dataset, shuffle=True)          # each rank its own shard
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ...
    ```

    ## Known false positives
    Ranks meant to see the same inputs inside a DDP/FSDP model (a tensor-parallel group nested
    in a data-parallel one, fingerprinted on the same steps) are reported. A model whose
    data-parallel wrapper traindoctor does not watch (the framework integrations watch the
    unwrapped module) is not judged.
    """
    ranks = sorted((tl.at("job.ranks", 0) or {}), key=int)
    if len(ranks) < 2 or not tl.at("job.ddp", 0):
        return  # no data-parallel wrapper seen: ranks may share inputs by design (TP/PP)
    # rank -> {step: the fingerprint as a hashable tuple}
    fps: dict[str, dict[int, tuple]] = {r: {} for r in ranks}
    for step, by_rank in tl.series("job.data_fp"):
        for r, fp in (by_rank or {}).items():
            if r in fps and isinstance(fp, dict) and fp:
                fps[r][step] = _key(fp)
    groups: list[list[str]] = []
    evidence: dict[str, Any] = {}
    for i, a in enumerate(ranks):
        if any(a in g for g in groups):
            continue
        group = [a]
        for b in ranks[i + 1 :]:
            common = sorted(set(fps[a]) & set(fps[b]))
            if len(common) < min_steps:
                continue
            same = [s for s in common if fps[a][s] == fps[b][s]]
            distinct = {fps[a][s] for s in same}
            if len(same) >= share * len(common) and len(distinct) >= 2:
                group.append(b)
                evidence[f"{a}-{b}"] = {"common_steps": len(common), "identical": len(same)}
        if len(group) > 1:
            groups.append(group)
    if not groups:
        return
    named = sorted({int(r) for g in groups for r in g})
    first = groups[0]
    pair = evidence[f"{first[0]}-{first[1]}"]
    steps = sorted(set(fps[first[0]]) & set(fps[first[1]]))
    loader = _loader_line(tl, named)
    yield tl.finding(
        title=(
            f"Ranks {', '.join(first)} trained on identical batches: {pair['identical']} of "
            f"{pair['common_steps']} fingerprinted steps bit-identical"
            + (f" (and {len(groups) - 1} more group(s) of ranks)" if len(groups) > 1 else "")
        ),
        step=steps[0] if steps else None,
        evidence={
            "ranks": named,
            "groups": [[int(r) for r in g] for g in groups],
            "pairs": evidence,
            "world_size_read": len(ranks),
            **({"loader_iterated_at": loader["iterated"]} if loader else {}),
        },
        where=Where(op="DataLoader", source=loader["built"] if loader else None),
        cause=(
            "every rank draws the same batches (no DistributedSampler, or the same shuffling "
            "seed on every rank): the all-reduced gradient is one batch's gradient computed "
            f"{len(first)} times"
        ),
        fix=(
            "give each rank its shard: DataLoader(dataset, sampler=DistributedSampler(dataset)) "
            "with sampler.set_epoch(epoch) each epoch (or a dataset that reads its rank's part)"
        ),
        confidence=0.9,
    )


def _loader_line(tl: TimelineView, ranks: list[int]) -> dict[str, str] | None:
    """{built, iterated} of the training loop's DataLoader, from the lowest rank that found
    them among `ranks`."""
    rows = tl.series("job.loader")
    for r in ranks:
        for _, by_rank in rows:
            found = (by_rank or {}).get(str(r))
            if isinstance(found, dict) and isinstance(found.get("built"), str):
                return found
    return None


def _key(fp: dict[str, Any]) -> tuple:
    """A fingerprint as a hashable, NaN-safe tuple (NaN compares equal to NaN here)."""
    return tuple(
        (k, "nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in sorted(fp.items())
    )

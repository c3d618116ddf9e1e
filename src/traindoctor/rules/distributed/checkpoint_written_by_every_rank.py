"""TD607 checkpoint-written-by-every-rank."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

MAX_PATHS = 8


@rule(
    code="TD607",
    name="checkpoint-written-by-every-rank",
    severity=Severity.WARNING,
    summary="Several ranks torch.save to the same file: concurrent writes can leave a "
    "truncated or corrupt checkpoint.",
    requires=("job.save", "job.ranks"),
    priority=30,
)
def checkpoint_written_by_every_rank(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Two or more ranks of one job called `torch.save` with the same file path on the same host:
    the checkpoint code runs on every rank instead of on rank 0 only. Real reports:
    bytedance/ibot#15 (https://github.com/bytedance/ibot/issues/15: "every processor would
    save a checkpoint ... the saved checkpoint can not be loaded by torch.load"),
    NVIDIA/apex#629 (https://github.com/NVIDIA/apex/issues/629: two processes saving with the
    same file name, "storage has wrong size" at load), NVIDIA/apex#886
    (https://github.com/NVIDIA/apex/issues/886: `local_rank == 0` on several nodes writing one
    shared path).

    ## Why it matters
    The ranks write the same file at the same moment: each opens it truncating what another
    is writing, so the file on disk can mix their bytes or end short. The job seems fine until
    the checkpoint is loaded, often days later, and fails ("PytorchStreamReader failed",
    "storage has wrong size") or silently holds a torn state. It also costs N times the I/O.

    ## How it is measured
    While a rank is watched, `torch.save` passes through a thin wrapper that records the
    absolute path of each file it writes (file objects and buffers are not recorded: a
    framework that saves through one saves on rank 0), the host and the user's line, before
    calling torch's own `save` unchanged. The merge groups the ranks' records by host and path;
    a path written by two or more ranks of one host is reported, with the optimizer steps
    after which each wrote it.
    Paths that differ by rank (`ckpt_rank{rank}.pt`, each rank its shard) are different files.

    ## Example
    ```python
    for epoch in range(epochs):
        train_one_epoch(model, loader)
        torch.save(model.module.state_dict(), "checkpoint.pt")   # on every rank
    ```

    ## Fix
    ```python
    if dist.get_rank() == 0:
        torch.save(model.module.state_dict(), "checkpoint.pt")
    dist.barrier()          # if other ranks read it next
    ```

    ## Known false positives
    None known for one host. Ranks on different hosts writing one path are not compared: the
    path may be each node's local disk (on a shared file system that is the same race, and
    it is missed).
    """
    ranks = sorted(int(r) for r in (tl.at("job.ranks", 0) or {}))
    if len(ranks) < 2:
        return
    # (host, path) -> rank -> [steps], and the user's line of the lowest rank's first save
    writes: dict[tuple[str, str], dict[int, list[int]]] = {}
    sources: dict[tuple[str, str], dict[int, str]] = {}
    for step, by_rank in tl.series("job.save"):
        for r, saves in (by_rank or {}).items():
            for s in saves if isinstance(saves, list) else ():
                if not isinstance(s, dict) or not isinstance(s.get("path"), str):
                    continue
                key = (str(s.get("host") or ""), s["path"])
                steps = writes.setdefault(key, {}).setdefault(int(r), [])
                # Recorded at the step open when torch.save ran: after the one before it.
                after = max(0, step - 1)
                if after not in steps:
                    steps.append(after)
                if s.get("source"):
                    sources.setdefault(key, {}).setdefault(int(r), str(s["source"]))
    shared = {k: v for k, v in writes.items() if len(v) >= 2}
    if not shared:
        return
    keys = sorted(shared, key=lambda k: (-len(shared[k]), min(min(s) for s in shared[k].values())))
    host, path = keys[0]
    by_rank = shared[keys[0]]
    writers = sorted(by_rank)
    together = sorted(set.intersection(*(set(v) for v in by_rank.values())))
    first = min(min(v) for v in by_rank.values())
    src = sources.get(keys[0], {})
    source = src[min(src)] if src else None
    paths: list[dict[str, Any]] = [
        {"path": p, "ranks": sorted(shared[(h, p)]), "host": h} for h, p in keys[:MAX_PATHS]
    ]
    return_ranks = sorted({r for v in shared.values() for r in v})
    yield tl.finding(
        title=(
            f"{len(writers)} ranks ({', '.join(map(str, writers))}) torch.save'd the same file "
            f"{path}"
            + (f", both after step(s) {', '.join(map(str, together[:5]))}" if together else "")
            + (f" (and {len(keys) - 1} more shared path(s))" if len(keys) > 1 else "")
        ),
        step=first,
        evidence={
            "ranks": return_ranks,
            "path": path,
            "host": host,
            "after_steps_by_rank": {str(r): v[:20] for r, v in sorted(by_rank.items())},
            "same_steps": together[:20],
            "paths": paths,
        },
        where=Where(op="torch.save", source=source),
        cause=(
            "the checkpoint is written by every rank to one path: the ranks' writes race on "
            "the same file, which can end truncated or interleaved (it fails at torch.load)"
        ),
        fix=(
            "save on one rank only: `if dist.get_rank() == 0: torch.save(...)` (then "
            "dist.barrier() before other ranks read it), or give each rank its own path"
        ),
        confidence=0.9,
    )

"""TD513 augmentation-repeats-across-workers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule


@rule(
    code="TD513",
    name="augmentation-repeats-across-workers",
    severity=Severity.WARNING,
    summary="'Random' samples come back within a few batches while others are new: "
    "DataLoader workers share one random state.",
    requires=("data.samples",),
    events=("data_loader",),
    priority=33,
)
def augmentation_repeats_across_workers(
    tl: TimelineView,
    *,
    max_lag: int = 16,
    min_repeats: int = 3,
    min_fresh: int = 3,
    share: float = 0.9,
) -> Iterator[Finding]:
    """
    ## What it detects
    Batches whose samples (at least `share` of them) are bit-identical to samples of a batch
    seen at most `max_lag` steps earlier, at least `min_repeats` times, while at least
    `min_fresh` batches of entirely new samples keep arriving after the first repeat. That is
    the pattern of DataLoader workers that each hold a copy of one random state: worker k
    produces the same "random" batch as worker 0 (A A B B C C with 2 workers). An
    `IterableDataset` that does not split its stream between workers gives the same pattern
    (every worker yields the whole stream), and is reported the same way.

    ## Why it matters
    Measured with torch 2.13: each DataLoader worker seeds Python's `random`, torch and the
    global NumPy RNG with its own seed (per epoch), so `np.random.rand()` in `__getitem__`
    is fine. A random state the *dataset owns* is not reseeded: a
    `np.random.default_rng(0)` or `torch.Generator` created in `__init__` is copied into
    every worker (fork or spawn alike), so every worker draws the same numbers, and each
    epoch again. With W workers, the random augmentations or generated samples repeat W
    times: the effective data is W times smaller, and the model overfits it. Likewise each
    worker runs its own `IterableDataset.__iter__`: unless it reads only its share
    (`get_worker_info().id` / `num_workers`), every sample is trained on W times per epoch.

    ## How it is measured
    On the first 32 steps, one fingerprint per sample (a weighted sum with fixed weights of
    up to 4,096 of its values) of the first batched input is computed on the device and read
    back in the batched read-back. A batch is a repeat when `share` of its samples equal
    samples seen at most `max_lag` steps before, and fresh when none of them was seen. A data
    set without augmentation repeats only after an epoch, and then every batch repeats (no
    fresh batches follow), so it is not reported; neither is one batch fed every step (that
    is TD504), nor repeats unless a DataLoader with at least 2 workers was found (a small
    data set under a random flip repeats some samples among fresh ones after an epoch; PPO's
    epochs over each rollout's minibatches, drawn by hand, repeat the same way). A loader is
    found when the script iterates it after `td.watch` (from the start under `traindoctor
    run`): one iterated before is not, and its repeats are not reported.

    Also, without any repeated sample (augmentations of real data that differ anyway): a
    DataLoader in the user's frames (see TD504) with at least 2 workers and no
    `worker_init_fn`, over a data set that owns a random generator (a NumPy `Generator` /
    `RandomState`, `random.Random` or `torch.Generator`, found down two attribute levels, e.g.
    a transform's own) that a method other than `__init__` reads (`self.<attr>` in its
    source): every worker draws the same sequence from the same copied state. A generator
    read only in `__init__` (data generated once) is not reported.

    ## Example
    ```python
    class Synthetic(Dataset):
        def __init__(self):
            self.rng = np.random.default_rng(0)       # copied into every worker
        def __getitem__(self, i):
            return self.rng.normal(size=16), ...
    loader = DataLoader(Synthetic(), batch_size=32, num_workers=2)
    ```

    ## Fix
    ```python
    def worker_init_fn(worker_id):
        info = torch.utils.data.get_worker_info()
        info.dataset.rng = np.random.default_rng(info.seed)   # a distinct stream per worker
    loader = DataLoader(Synthetic(), batch_size=32, num_workers=2, worker_init_fn=worker_init_fn)
    ```
    or draw from `np.random` / `torch` inside `__getitem__`, which torch reseeds per worker.
    For an `IterableDataset`, let worker `info.id` of `info.num_workers` read every
    `num_workers`-th item from its `id`-th on.

    ## Known false positives
    Deliberate data echoing (each batch trained on k times in a row) looks the same. Repeated
    augmentations of samples that differ (a shared crop offset applied to different images)
    leave no identical samples and are not detected: only fully random samples (generated
    data, noise) are seen repeating.
    """
    config = _shared_generator(tl)
    loaders = [e.get("num_workers") or 0 for e in tl.events("data_loader")]
    # Only where a DataLoader with several workers was seen: with none, or every one running
    # its items in the main process (or one worker), there are no copies of a random state to
    # repeat. A small data set under a random flip over several epochs repeats some samples
    # (same image, same flip) among fresh ones the same way (torchvision's detection reference
    # on 16 images, num_workers=0), and so does PPO's few epochs over each rollout's
    # minibatches, drawn by hand with no DataLoader at all.
    sampled = (
        _sample_repeats(tl, max_lag, min_repeats, min_fresh, share)
        if loaders and max(loaders) >= 2
        else None
    )
    if sampled is not None:
        yield sampled
    elif config is not None:
        yield config


def _shared_generator(tl: TimelineView) -> Finding | None:
    """A DataLoader with several workers and no worker_init_fn over a data set that owns a
    random generator which a method other than `__init__` reads: every worker starts from
    the same copy of it."""
    for e in tl.events("data_loader"):
        workers = e.get("num_workers") or 0
        if workers < 2 or e.get("worker_init_fn"):
            continue
        used = [g for g in e.get("generators") or [] if isinstance(g, dict) and g.get("used_in")]
        if not used:
            continue
        g = used[0]
        method, _, rest = str(g["used_in"]).partition(" (")
        source = rest.rstrip(")") or None
        name = e.get("name") or "the DataLoader"
        return tl.finding(
            title=f"`{name}` runs {workers} workers that each start from the same copy of "
            f"`{g['path']}` ({g['kind']}), drawn from in `{method}`: their random "
            "augmentations repeat",
            step=e.get("step"),
            evidence={
                "loader": name,
                "num_workers": workers,
                "worker_init_fn": False,
                "generators": used,
                "dataset_type": e.get("dataset_type"),
                "batch_size": e.get("batch_size"),
            },
            where=Where(source=source),
            cause=f"`{g['path']}` is a {g['kind']} the data set owns; DataLoader copies the "
            f"data set into each of its {workers} worker processes, state included, and no "
            "worker_init_fn reseeds it, so every worker draws the same sequence "
            f"(`{method}` reads it per item): the k-th sample of each worker gets the same "
            "random augmentation, and every epoch again from the same state. torch reseeds "
            "only the global RNGs per worker (random, torch, np.random), not generators a "
            "data set holds",
            fix="reseed it per worker: DataLoader(..., worker_init_fn=lambda i: setattr("
            "torch.utils.data.get_worker_info().dataset, 'rng', np.random.default_rng("
            "torch.utils.data.get_worker_info().seed % 2**32))), or draw from np.random / "
            "torch inside __getitem__ (reseeded per worker and per epoch)",
            confidence=0.8,
        )
    return None


def _sample_repeats(
    tl: TimelineView, max_lag: int, min_repeats: int, min_fresh: int, share: float
) -> Finding | None:
    seen: dict[float, int] = {}
    repeats: list[tuple[int, int]] = []  # (step, lag)
    fresh_after = 0
    checked = 0
    for step, fps in tl.series("data.samples"):
        if not isinstance(fps, list) or len(fps) < 2:
            continue
        checked += 1
        hits = [seen[v] for v in fps if v in seen]
        if len(hits) >= share * len(fps):
            lag = step - max(hits)
            if lag <= max_lag:
                repeats.append((step, lag))
        elif not hits and repeats:
            fresh_after += 1
        for v in fps:
            seen[v] = step
    if len(repeats) < min_repeats or fresh_after < min_fresh:
        return None
    lag = Counter(lg for _, lg in repeats).most_common(1)[0][0]
    # Workers: 1 + the usual number of repeats in a row (A A B B: 1 repeat per group -> 2).
    runs: list[int] = []
    run, prev = 0, None
    for s, _ in repeats:
        if prev is not None and s == prev + 1:
            run += 1
        else:
            if run:
                runs.append(run)
            run = 1
        prev = s
    runs.append(run)
    workers = Counter(runs).most_common(1)[0][0] + 1
    first = repeats[0][0]
    return tl.finding(
        title=f"{len(repeats)} of {checked} batches repeat the samples of a batch {lag} "
        f"step{'s' if lag != 1 else ''} earlier while {fresh_after} others are new: "
        f"the pattern of {workers} DataLoader workers sharing one random state",
        step=first,
        evidence={
            "batches_checked": checked,
            "repeated_batches": len(repeats),
            "fresh_batches_after_first_repeat": fresh_after,
            "lag": lag,
            "estimated_workers": workers,
            "repeat_steps": [s for s, _ in repeats[:12]],
        },
        cause=f"from step {first}, {len(repeats)} batches consist of samples bit-identical "
        f"to those of a batch {lag} step(s) earlier, while fresh batches keep coming: each "
        "group of consecutive batches comes from different DataLoader workers that produce "
        "the same samples: a NumPy Generator or torch.Generator created in the dataset's "
        "__init__ and copied into every worker, or an IterableDataset whose __iter__ does not "
        "split the stream between workers",
        fix="give each worker its own stream: in worker_init_fn reseed the dataset's generator "
        "from torch.utils.data.get_worker_info().seed, or draw from np.random/torch inside "
        "__getitem__ (torch reseeds those per worker and per epoch); in an IterableDataset, "
        "have worker `info.id` yield only every `info.num_workers`-th item",
        confidence=0.8,
    )

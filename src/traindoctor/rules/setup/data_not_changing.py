"""TD504 data-not-changing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule


@rule(
    code="TD504",
    name="data-not-changing",
    severity=Severity.WARNING,
    summary="The model trains on the same batch step after step.",
    requires=("data.fp", "data.inputs", "data.eval_fp", "optim.step", "params.update"),
    events=("data_base_in_eval", "data_forward", "data_loader"),
    priority=30,
)
def data_not_changing(tl: TimelineView, *, min_steps: int = 10) -> Iterator[Finding]:
    """
    ## What it detects
    The first training batch of each step is bit-identical to the previous step's for at
    least `min_steps` consecutive optimizer steps: the loop trains on one batch over and over.
    A warning when the batches changed before they froze, or when one batch is used for the
    whole run while a larger source of it was measured (a DataLoader with that batch size
    over a data set at least twice as large: `x, y = next(iter(loader))` before the loop; a
    constant slice `X[:64]` of a tensor with at least twice the rows; at least 3 other batches
    of its shape and dtype fed to the model outside training, a loss estimate or validation
    on fresh batches while the loop trains on one); info when one batch
    is used for the whole run and nothing larger is known, which is also what deliberate
    full-batch training looks like.

    ## Why it matters
    The loss falls nicely (the model memorizes the batch) while nothing is learned about the
    data set: validation stays at chance. Typical causes: `x, y = next(iter(loader))` taken
    once before the loop, a loop variable shadowed by a batch fetched outside it, an index
    that never advances (`data[0]`), a dataset whose `__getitem__` ignores its index.

    ## How it is measured
    On the first training forward of a step (every step for the first 64, then each sampled
    step and the step after it; grad enabled, train mode, outside `doc.validating()`), the
    root model's forward pre-hook computes on the device, per input
    tensor, the sum, sum of squares, a weighted sum with fixed pseudo-random weights, the
    min and the max (over a strided view of at most 262,144 elements); they are read back
    with the batched read-back. Two steps have the same batch when all five values of every
    input are equal to the bit; a run of identical fingerprints must include at least two
    pairs of adjacent steps (a loader whose epoch length divides the sampling interval shows
    the same batch at every sampled step, but not at the step after). The run must be made of
    real optimizer steps (`optim.step`),
    and where the parameter updates were sampled (`params.update`), they are reported.
    Validation forwards (no_grad or eval mode) are never fingerprinted. The source: the data
    probe describes an input that is a row slice of a larger tensor (its `_base`, same
    trailing shape, more rows), and notes a forward outside training on other rows of that
    tensor (then the rest is a validation split, and the slice is not called a bug); on the
    first 3 training forwards it describes the DataLoaders in the user's frames on the stack
    (locals, module globals, one attribute level: batch size, dataset length). The first 16
    forwards outside training whose first input has the training input's shape and dtype are
    fingerprinted alike (no more than 16 in a run).

    ## Example
    ```python
    x, y = next(iter(loader))          # taken once
    for step in range(1000):
        loss = criterion(model(x), y)  # the same batch every step
    ```

    ## Fix
    ```python
    for x, y in loader:                # a fresh batch every step
        loss = criterion(model(x), y)
    ```

    ## Known false positives
    Deliberate full-batch training (L-BFGS on a small data set, physics-informed networks on
    fixed collocation points) and the "overfit one batch" sanity check train on one batch on
    purpose; that case (one batch for the whole run) is reported as info only, and can be
    ignored (`--ignore TD504`). Taken from a larger loader or tensor (the "overfit one batch"
    check with `next(iter(loader))`, a small training split sliced off a tensor with no
    validation forward on the rest) it is a warning, and so is full-batch training evaluated
    without gradient on at least 3 other batches of exactly the training batch's shape and
    dtype (fixed collocation points tested on fresh random points of the same count).
    """
    # Fingerprints come every step early on, then in pairs (a sampled step and the next). A
    # streak is a run of bit-identical fingerprints over the fingerprinted steps; it must hold
    # pairs of adjacent steps, so that a loader whose epoch length divides the sampling
    # interval (the same batch index at every sampled step) is not mistaken for it.
    best: tuple[int, int, int, int] = (0, 0, 0, 0)  # first, last, records, adjacent pairs
    start = prev_step = None
    prev: Any = None
    records = pairs = 0
    for step, fp in tl.series("data.fp"):
        if not isinstance(fp, dict) or not fp:
            start, prev, prev_step = None, None, None
            continue
        if start is not None and fp == prev:
            records += 1
            pairs += prev_step == step - 1
            if pairs >= 2 and step - start > best[1] - best[0]:
                best = (start, step, records, pairs)
        else:
            start, records, pairs = step, 1, 0
        prev, prev_step = fp, step
    first, last, n_records, _ = best
    length = last - first + 1 if last else 0
    if length < min_steps:
        return
    steps = range(first, last + 1)
    # optim.step (every step) read over the streak only, not from the start (issue 15)
    n_stepped = sum(1 for s in steps if tl.at("optim.step", s))
    if n_stepped < min_steps - 1:
        return  # not training steps: nothing is being trained on that batch
    updates = [
        sum(v for v in upd.values() if isinstance(v, int | float))
        for s, upd in tl.series("params.update")
        if first <= s <= last and isinstance(upd, dict)
    ]
    if updates and not any(u > 0 for u in updates):
        return  # the parameters do not move either: TD104's finding, not a data problem
    fp = dict(tl.series("data.fp"))[first]
    shown = _inputs_at(tl, first)
    key = next(iter(shown), None)
    shape = shown[key]["shape"] if key else None
    # Fingerprints are sampled after the first steps: the streak runs "to the end" when no
    # later fingerprint differs, even if the run's last steps were not fingerprinted.
    fingerprinted = [s for s, _ in tl.series("data.fp")]
    until_end = last == fingerprinted[-1]
    # One batch from the first fingerprinted step on is also what deliberate full-batch
    # training looks like: reported as info. Batches that changed and then froze cannot be.
    # Per input: a model trained phase by phase (layer-wise training, each layer on the full
    # batch) feeds a new first layer in each phase, a different input, not a changed batch.
    same_input = [s for s, f in tl.series("data.fp") if isinstance(f, dict) and set(f) == set(fp)]
    whole_run = first == same_input[0] and last == same_input[-1]
    # One batch for the whole run is a bug, not full-batch training, when a larger source of
    # that batch was measured: a DataLoader with this batch size over a data set at least
    # twice as large, or a tensor at least twice as large whose rows the batch slices (and
    # whose other rows are not fed to the model outside training, as a validation split).
    larger = _larger_source(tl, shown.get(key) if key else None)
    if larger is None and key:
        larger = _fresh_batches(tl, key, fp, shown[key])
    # What was measured: "to the end of the run" only where the run's last step was
    # fingerprinted; a run of 100 steps whose fingerprints stop at step 81 says so.
    run_last = tl.last_step
    if until_end and last >= run_last:
        span = f"steps {first}–{last} (to the end of the run)"
    elif until_end:
        span = f"steps {first}–{last}; steps {last + 1}–{run_last} were not fingerprinted"
    else:
        span = f"steps {first}–{last}"
    evidence: dict[str, Any] = {
        "identical_steps": length,
        "fingerprinted_steps": n_records,
        "first_step": first,
        "last_step": last,
        "optimizer_steps": n_stepped,
        "last_fingerprinted_step": fingerprinted[-1],
        "run_last_step": run_last,
        "inputs": shown,
        "fingerprint": {k: v for k, v in fp.items() if key and k.startswith(f"{key}.")},
    }
    if updates:
        evidence["sampled_param_updates"] = [round(u, 6) for u in updates[:5]]
    if larger:
        evidence["larger_source"] = larger
    source = ""
    if larger and larger.get("kind") == "loader":
        source = (
            f": `{larger['name']}` holds {larger['dataset_len']} samples in batches of "
            f"{larger['batch_size']}, so {larger['dataset_len'] - larger['batch_size']} of "
            "them are never trained on"
        )
    elif larger and larger.get("kind") == "fresh_batches":
        source = (
            f"; yet outside training (a validation or a loss estimate) the model was fed "
            f"{larger['distinct']} other batches of this shape and dtype, so the program has "
            "fresh batches and the training loop does not take them"
        )
    elif larger:
        source = (
            f": the batch is rows of a {larger['rows']}-row tensor (a constant slice), so "
            f"{larger['rows'] - larger['batch_rows']} rows are never trained on"
        )
    fed_at = [e.get("source") for e in tl.events("data_forward") if e.get("step", 0) <= first]
    full_batch = whole_run and not larger
    reading = (
        # Nothing says which: deliberate full-batch training looks the same.
        "one batch for the whole run: full-batch training if meant (L-BFGS, a fixed grid of "
        "coordinates or collocation points, a data set that fits in one batch); otherwise "
        "the loop feeds one batch again and again, so the model memorizes it"
        if full_batch
        else "the loop feeds one batch again and again, so the model memorizes it"
    )
    yield tl.finding(
        title=f"The same batch was trained on for {length} consecutive steps ({span})"
        + (f", fingerprinted at {n_records} of them" if n_records < length else ""),
        step=first,
        evidence=evidence,
        cause=f"the first training batch of each of {length} consecutive optimizer steps had "
        f"bit-identical fingerprints (sum, sum of squares, weighted sum, min, max of every "
        f"input{f'; input {key} of shape {shape}' if key else ''}) while the optimizer kept "
        f"stepping: {reading}{source}",
        fix=("nothing to fix for deliberate full-batch training; otherwise " if full_batch else "")
        + "fetch a new batch every step (`for x, y in loader:`), not once before the loop; "
        "check that the batch index advances and that the dataset's __getitem__ uses its index",
        confidence=0.9 if until_end else 0.8,
        where=Where(source=fed_at[-1] if fed_at and fed_at[-1] else None),
        severity=Severity.INFO if full_batch else None,
    )


def _larger_source(tl: TimelineView, shown: dict[str, Any] | None) -> dict[str, Any] | None:
    """A measured source of the stuck batch at least twice its size, or None."""
    if not shown or not shown.get("shape"):
        return None
    rows = int(shown["shape"][0])
    total = shown.get("slice_of_rows")
    if isinstance(total, int) and total >= 2 * rows and not tl.events("data_base_in_eval"):
        return {"kind": "slice", "rows": total, "batch_rows": rows}
    for e in tl.events("data_loader"):
        n, b = e.get("dataset_len"), e.get("batch_size")
        if isinstance(n, int) and b == rows and n >= 2 * rows:
            return {"kind": "loader", "name": e.get("name"), "dataset_len": n, "batch_size": b}
    return None


MIN_FRESH = 3  # distinct batches seen outside training that make a source of fresh ones


def _fresh_batches(
    tl: TimelineView, key: str, fp: dict[str, Any], shown: dict[str, Any]
) -> dict[str, Any] | None:
    """Batches of the stuck input's shape and dtype fed to the model outside training (no
    grad or eval mode) that differ from it and from each other: the program draws fresh
    batches (nanoGPT's estimate_loss calls get_batch) while training reuses one."""
    stuck = tuple(fp.get(f"{key}.{s}") for s in ("sum", "sumsq", "wsum", "min", "max"))
    seen: dict[str, dict[str, float]] = {}
    for _, values in tl.series("data.eval_fp"):
        for k, v in (values or {}).items():
            name, _, stat = str(k).rpartition(".")
            which, _, n = name.rpartition("@")
            if which == key and n.isdigit() and isinstance(v, int | float):
                seen.setdefault(n, {})[stat] = float(v)
    stats = ("sum", "sumsq", "wsum", "min", "max")
    distinct = {tuple(d.get(s) for s in stats) for d in seen.values() if len(d) == len(stats)}
    distinct.discard(stuck)
    if len(distinct) < MIN_FRESH:
        return None
    return {
        "kind": "fresh_batches",
        "distinct": len(distinct),
        "forwards": len(seen),
        "shape": shown.get("shape"),
        "dtype": shown.get("dtype"),
    }


def _inputs_at(tl: TimelineView, step: int) -> dict[str, Any]:
    """The input descriptions (dtype, shape) in force at `step` (recorded when they change)."""
    current: dict[str, Any] = {}
    for s, info in tl.series("data.inputs"):
        if s > step:
            break
        if isinstance(info, dict):
            current.update(info)
    return current

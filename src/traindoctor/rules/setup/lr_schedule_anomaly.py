"""TD503 lr-schedule-anomaly.

Tests: tests/rules/test_td503_lr_schedule_anomaly.py (hand-built timelines; its docstring lists
every part of this rule: probes, scenarios, real-run tests, docs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import Reader, fresh
from .._registry import rule
from .._util import optimizer_source

# LR trace points kept in the evidence: enough to see the shape, small in findings.json.
TRACE_POINTS = 24
_NOT_EVIDENCE = ("severity", "text", "title", "scheduler")
_RANK = {"error": 0, "warning": 1, "info": 2}


@rule(
    code="TD503",
    name="lr-schedule-anomaly",
    severity=Severity.WARNING,
    summary="The learning rate is 0 or collapsed for most of the run, or the scheduler "
    "runs ahead of the optimizer (sized in epochs, stepped per batch).",
    requires=("optim.lr", "optim.step", "schedule.steps", "amp.skipped", "backward.count"),
    events=("lr_scheduler", "data_loader", "scheduler_epoch_arg"),
    facts=("optimizers", "framework"),
    priority=35,
    state=lambda: ScheduleScan(),
)
def lr_schedule_anomaly(
    tl: TimelineView,
    state: ScheduleScan,
    *,
    min_steps: int = 8,
    most: float = 0.5,
    collapse_ratio: float = 0.01,
    extra_share: float = 0.1,
) -> Iterator[Finding]:
    """
    ## What it detects
    Learning-rate schedules that do not do what they were built for:
    - the lr of a param group is 0 for most of the observed steps (`most`);
    - the lr collapses to `collapse_ratio` of its peak or less and stays there for most of the
      run: a scheduler sized in epochs (`StepLR(step_size=30)`, `MultiStepLR(milestones=[30,
      60])`, `ExponentialLR`) stepped after every batch, or given a value that is no epoch
      count as its epoch argument (`scheduler.step(loss)` on a MultiStepLR: the loss read as
      the epoch number; the cause then names the value and the step() line);
    - a `CosineAnnealingLR` stepped at least 2·T_max times: past T_max the cosine climbs back
      up, so the lr cycles (T_max given in epochs, stepped per batch);
    - a scheduler stepped more often than its optimizer (`scheduler.step()` inside the
      micro-batch loop of gradient accumulation, or on the steps a GradScaler skipped);
    - a `StepLR` stepped at every optimizer step whose `step_size` is a fraction of an epoch of
      the loader the loop iterates, over two epochs or more: it decays several times within
      every epoch (`step_size` counted in epochs, stepped per batch), before the lr collapses.

    ## Why it matters
    The loss curve looks like a slow or stalled training, not like a schedule bug. An
    epoch-sized schedule stepped per batch runs `len(loader)` times too fast: the lr decays
    in the first epoch and the rest of the run trains with (almost) nothing. A schedule that
    runs ahead of the optimizer reaches its end (or its restarts) early.

    ## How it is measured
    Each group's lr is read at every `optimizer.step()` (the lr trace is in the evidence).
    `LRScheduler.step` is wrapped process-wide while a doctor is attached, so each scheduler
    of a watched optimizer is seen with its class, its settings (`step_size`, `milestones`,
    `T_max`, ...) and the line that steps it, and its `step()` calls are counted against the
    optimizer's steps. The constructor's own initial `step()` is not counted. An epoch's
    length is the iterated DataLoader's batches (`len(loader)`: what its sampler or batch
    sampler yields, a DistributedSampler's shard, drop_last; unknown for an iterable data set)
    divided by the backward passes of an optimizer step; a StepLR is judged on it only when
    one such length is known and the run covered two of them (a warning at two decays or more
    an epoch, info below; info too when a Lightning or Hugging Face Trainer steps it: stepping
    per step was then configured, not a `scheduler.step()` put in the batch loop).

    ## Example
    ```python
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)  # 30 epochs
    for epoch in range(90):
        for x, y in loader:
            loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
            sched.step()                    # per batch: lr x 0.1 every 30 batches
    ```

    ## Fix
    ```python
    for epoch in range(90):
        for x, y in loader:
            ...
        sched.step()                        # once per epoch, as the schedule is sized
    # or size it in batches: CosineAnnealingLR(opt, T_max=epochs * len(loader)), OneCycleLR
    ```

    ## Known false positives
    A run stopped (or observed) far past the end of a schedule sized for a shorter run, and
    schedules that deliberately decay to a floor early (then train there for most of the
    run), are reported. A warmup that starts at lr 0 is not: it leaves 0 after a few steps.
    """
    if not fresh(state, tl):
        state.__init__()  # an earlier step was rewritten: read everything again
    traces, opt_steps, skipped, sched_steps = state.read(tl, collapse_ratio)
    schedulers = tl.events("lr_scheduler")
    cases: list[dict[str, Any]] = []
    for gid, trace in traces.items():
        case = _judge_trace(gid, trace, min_steps, most, collapse_ratio)
        if case and case["kind"] == "zero" and _frozen_group(gid, trace, traces, most):
            case = _as_freeze(case)
        if case:
            cases.append(case)
    _epoch_arg_cause(tl, schedulers, cases)
    epoch = None
    for sched in schedulers:
        n = sched_steps.get(sched.get("key"), 0)
        case = _judge_scheduler(sched, n, opt_steps, skipped, extra_share)
        if case is None and sched.get("cls") == "StepLR":
            epoch = epoch or _epoch_steps(tl)
            case = _judge_step_lr_per_batch(tl, sched, n, opt_steps, epoch, traces)
        if case:
            cases.append(case)
    if not cases:
        return
    cases.sort(key=lambda c: (_RANK[c["severity"]], c["step"]))
    first = cases[0]
    gid = first.get("group") or _group_of(tl, first.get("optimizer"))
    sched = first.get("scheduler") or _scheduler_of(schedulers, gid)
    evidence: dict[str, Any] = {
        "cases": [{k: v for k, v in c.items() if k not in _NOT_EVIDENCE} for c in cases],
        # the whole trace: read only for a finding
        "lr_trace": _downsample(_traces(tl.series("optim.lr")).get(gid, []) if gid else []),
        "optimizer_steps": opt_steps,
    }
    if sched:
        evidence["scheduler"] = {
            "class": sched.get("cls"),
            "settings": sched.get("settings"),
            "steps": sched_steps.get(sched.get("key"), 0),
        }
    source = sched.get("source") if sched else _opt_source(tl)
    yield tl.finding(
        title=first["title"],
        step=first["step"],
        evidence=evidence,
        where=Where(source=source),
        cause="; ".join(c["text"] for c in cases),
        fix=_fix(first),
        severity=Severity(first["severity"]),
    )


class Trace:
    """What _judge_trace needs of one group's lr trace, folded value by value in step order:
    its length, its zeros, its (first) peak, the values after the peak at or below
    `ratio` of it, its last value."""

    def __init__(self) -> None:
        self.n = self.zeros = self.low = 0
        self.first_zero: int | None = None
        self.peak: float | None = None
        self.peak_at = 0
        self.first_low: tuple[int, float] | None = None
        self.final = 0.0

    def add(self, step: int, lr: float, ratio: float) -> None:
        self.n += 1
        if lr == 0:
            self.zeros += 1
            if self.first_zero is None:
                self.first_zero = step
        if self.peak is None or lr > self.peak:  # max() keeps the first of equal peaks
            self.peak, self.peak_at, self.low, self.first_low = lr, step, 0, None
        elif step > self.peak_at and lr <= ratio * self.peak * (1 + 1e-6):
            self.low += 1
            if self.first_low is None:
                self.first_low = (step, lr)
        self.final = lr

    def copy(self) -> Trace:
        out = Trace()
        out.__dict__.update(self.__dict__)
        return out


class ScheduleScan:
    """TD503's state between passes (rules/_incremental.py): per param group its Trace, and
    the optimizer steps, GradScaler skips and scheduler steps counted so far, from the records
    written since the last pass (the newest ones, still being written, on copies)."""

    def __init__(self) -> None:
        self.lrs, self.steps = Reader("optim.lr"), Reader("optim.step")
        self.skips, self.scheds = Reader("amp.skipped"), Reader("schedule.steps")
        self.readers = (self.lrs, self.steps, self.skips, self.scheds)
        self.traces: dict[str, Trace] = {}
        self.opt_steps = self.skipped = 0
        self.sched_steps: dict[str, int] = {}

    def read(self, tl: TimelineView, ratio: float) -> tuple:
        """(traces, optimizer steps, skipped steps, scheduler steps per key)."""
        settled, pending = self.lrs.read(tl)
        for step, groups in settled:
            _add_lrs(self.traces, step, groups, ratio)
        traces = self.traces
        if pending:
            traces = {gid: t.copy() for gid, t in traces.items()}
            _add_lrs(traces, *pending[0], ratio)
        counts = []
        for reader, held in ((self.steps, self.opt_steps), (self.skips, self.skipped)):
            settled, pending = reader.read(tl)
            held += sum(1 for _, v in settled if v)
            counts.append((held, held + sum(1 for _, v in pending if v)))
        (self.opt_steps, opt_steps), (self.skipped, skipped) = counts
        settled, pending = self.scheds.read(tl)
        _add_counts(self.sched_steps, settled)
        sched_steps = self.sched_steps
        if pending:
            sched_steps = dict(sched_steps)
            _add_counts(sched_steps, pending)
        return traces, opt_steps, skipped, sched_steps


def _add_lrs(traces: dict[str, Trace], step: int, groups: Any, ratio: float) -> None:
    for gid, lr in (groups or {}).items():
        if isinstance(lr, int | float):
            traces.setdefault(gid, Trace()).add(step, float(lr), ratio)


def _add_counts(out: dict[str, int], records: list[tuple[int, Any]]) -> None:
    for _, counts in records:
        for key, n in (counts or {}).items():
            out[key] = out.get(key, 0) + int(n)


def _traces(lr_series: list[tuple[int, Any]]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for step, groups in lr_series:
        for gid, lr in (groups or {}).items():
            if isinstance(lr, int | float):
                out.setdefault(gid, []).append((step, float(lr)))
    return out


def _judge_trace(
    gid: str, trace: Trace, min_steps: int, most: float, ratio: float
) -> dict[str, Any] | None:
    n = trace.n
    if n < min_steps:
        return None
    if trace.zeros >= most * n:
        return {
            "kind": "zero",
            "group": gid,
            "severity": "error",
            "step": trace.first_zero,
            "zero_steps": trace.zeros,
            "observed_steps": n,
            "title": f"the learning rate of {gid} is 0 at {trace.zeros} of {n} observed steps",
            "text": f"{gid}'s lr is exactly 0 at {trace.zeros} of {n} steps: those steps change "
            "nothing",
        }
    peak = trace.peak
    if peak is None or peak <= 0:
        return None
    if trace.low < most * n or trace.first_low is None:
        return None
    (start, start_lr), final = trace.first_low, trace.final
    return {
        "kind": "collapse",
        "group": gid,
        "severity": "error",
        "step": start,
        "peak_lr": peak,
        "final_lr": final,
        "collapsed_steps": trace.low,
        "observed_steps": n,
        "title": f"the learning rate of {gid} collapsed from {peak:.3g} to {start_lr:.3g} "
        f"(≤{ratio:g}x) at step {start} and stayed there for {trace.low} of {n} steps",
        "text": f"{gid}'s lr fell to ≤{ratio:g} of its peak {peak:.3g} by step {start} and stays "
        f"there (last {final:.3g}) for {trace.low / n:.0%} of the run: the schedule ends long "
        "before the training does (a schedule sized in epochs, stepped per batch)",
    }


def _epoch_arg_cause(tl: TimelineView, schedulers: list[dict], cases: list[dict]) -> None:
    """A collapse whose optimizer's scheduler was stepped with a value that is no epoch count
    (`scheduler.step(loss)` on a MultiStepLR/StepLR/...: the loss read as the epoch, the lr
    computed in closed form there) gets that cause instead of the per-batch guess."""
    given = {e.get("key"): e for e in tl.events("scheduler_epoch_arg") if not e.get("whole")}
    if not given:
        return
    for case in cases:
        if case.get("kind") != "collapse":
            continue
        opt = str(case.get("group", "")).split("/", 1)[0]
        sched = next(
            (s for s in schedulers if s.get("optimizer") == opt and s.get("key") in given), None
        )
        if sched is None:
            continue
        value = given[sched["key"]].get("value")
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        case["text"] = (
            case["text"].split(": the schedule ends", 1)[0]
            + f": `{sched.get('cls')}.step()` at {sched.get('source')} was given a value "
            f"({shown}, not an epoch count) as its epoch argument, e.g. `scheduler.step(loss)`; "
            "a scheduler other than ReduceLROnPlateau takes it for the epoch number and sets "
            "the lr its schedule has at that epoch"
        )
        case["epoch_arg"] = value


def _frozen_group(gid: str, trace: Trace, traces: dict[str, Trace], most: float) -> bool:
    """A group whose lr was 0 at every observed step (built with lr=0: no schedule ever moved
    it) beside a group of the same optimizer that trains: a freeze written as a param group."""
    if trace.zeros != trace.n or trace.peak != 0:
        return False
    opt = gid.split("/", 1)[0]
    return any(
        g.split("/", 1)[0] == opt and t.peak and t.peak > 0 and t.zeros < most * t.n
        for g, t in traces.items()
        if g != gid
    )


def _as_freeze(case: dict[str, Any]) -> dict[str, Any]:
    gid = case["group"]
    return {
        **case,
        "kind": "zero_frozen_group",
        "severity": "info",
        "title": f"the learning rate of {gid} is 0 at every one of {case['observed_steps']} "
        "observed steps, beside a group that trains",
        "text": f"{gid} was built with lr 0 and stays there while another group of the same "
        "optimizer trains: its params never change (a freeze written as a param group; "
        "nothing to fix if that is meant)",
    }


def _judge_scheduler(
    sched: dict[str, Any], n: int, opt_steps: int, skipped: int, extra_share: float
) -> dict[str, Any] | None:
    cls, settings = sched.get("cls"), sched.get("settings") or {}
    name = f"{cls} ({sched.get('key')})"
    t_max = settings.get("T_max")
    if cls == "CosineAnnealingLR" and isinstance(t_max, int) and t_max >= 1 and n >= 2 * t_max:
        return {
            "kind": "cosine_restarts",
            "scheduler": sched,
            "severity": "warning",
            "step": sched["step"] + 2 * t_max,
            "T_max": t_max,
            "scheduler_steps": n,
            "cycles": round(n / (2 * t_max), 2),
            "title": f"CosineAnnealingLR(T_max={t_max}) was stepped {n} times: the lr went "
            f"through {n / (2 * t_max):.1f} cosine cycles instead of one decay",
            "text": f"{name} is stepped {n} times but T_max={t_max}: past T_max the cosine "
            f"climbs back up, so the lr cycles every {2 * t_max} steps (T_max sized in epochs, "
            "stepped per batch?)",
        }
    if sched.get("optimizer") != "opt0" or n < 3:
        return None  # optimizer steps are counted for the primary optimizer
    extra = n - opt_steps
    if extra < max(3, extra_share * n):
        return None
    per = n / opt_steps if opt_steps else float("inf")
    # One scheduler step per iteration while the scaler skipped some: the extra steps are
    # the skipped ones (accumulation would add (N - 1) per optimizer step instead).
    amp = bool(skipped) and extra <= skipped + max(1, skipped // 10)
    why = (
        f"{skipped} of the steps were skipped by the GradScaler and the scheduler stepped anyway"
        if amp
        else "scheduler.step() runs more often than optimizer.step() (inside the "
        "micro-batch loop of gradient accumulation?)"
    )
    ahead = (
        f"it also stepped on the {skipped} steps the GradScaler skipped"
        if amp
        else f"{per:.2g} per step"
    )
    return {
        "kind": "ahead_of_optimizer",
        "scheduler": sched,
        "severity": "warning",
        "step": sched["step"],
        "scheduler_steps": n,
        "optimizer_steps": opt_steps,
        "skipped_steps": skipped,
        "title": f"{cls} stepped {n} times for {opt_steps} optimizer steps "
        f"({ahead}): the schedule runs ahead of the training",
        "text": f"{name} stepped {n} times while the optimizer stepped {opt_steps} times: {why}",
    }


def _epoch_steps(tl: TimelineView) -> tuple[float | None, int | None]:
    """(optimizer steps an epoch, batches an epoch) of the DataLoader the training loop
    iterates, when the loaders seen (those iterated by the first training steps) agree on
    one length; the backward passes of the first steps divide it (gradient accumulation)."""
    lengths = set()
    for e in tl.events("data_loader"):
        if "batches" in e:
            # len(loader): what its sampler yields (a DistributedSampler's shard, a
            # WeightedRandomSampler's num_samples, a batch_sampler, drop_last); None for an
            # iterable data set, whose length per epoch nothing tells
            batches = e.get("batches")
            if not isinstance(batches, int) or batches <= 0:
                return None, None
            lengths.add(batches)
            continue
        n, b = e.get("dataset_len"), e.get("batch_size")  # a timeline written before `batches`
        if not isinstance(n, int) or not isinstance(b, int) or n <= 0 or b <= 0:
            return None, None  # a loader of unknown length (a batch sampler, an iterable)
        lengths.add(n // b if e.get("drop_last") else -(-n // b))
    if len(lengths) != 1:
        return None, None
    batches = lengths.pop()
    counts = [tl.at("backward.count", s) for s in (1, 2, 3)]
    counts = [c for c in counts if isinstance(c, int | float) and c >= 1]
    passes = sorted(counts)[len(counts) // 2] if counts else 1
    return batches / passes, batches


def _judge_step_lr_per_batch(
    tl: TimelineView,
    sched: dict[str, Any],
    n: int,
    opt_steps: int,
    epoch: tuple[float | None, int | None],
    traces: dict[str, Trace],
) -> dict[str, Any] | None:
    """A StepLR stepped with every optimizer step whose step_size is a fraction of an epoch:
    measured, the scheduler's steps against the optimizer's, the epoch's length from the
    loader, and the lr at the start, at the end of the first epoch and at the last step."""
    per_epoch, batches = epoch
    settings = sched.get("settings") or {}
    size, gamma = settings.get("step_size"), settings.get("gamma")
    if per_epoch is None or not isinstance(size, int) or size < 1:
        return None
    if not isinstance(gamma, int | float) or not 0 < gamma < 1:
        return None
    if sched.get("optimizer") != "opt0" or opt_steps < 2 * per_epoch:
        return None  # fewer than two epochs: a run that may be sized in steps
    if abs(n - opt_steps) > max(1, 0.05 * opt_steps) or size >= per_epoch:
        return None  # not stepped once a step, or decays less than once an epoch
    gid = f"{sched['optimizer']}/group0"
    first_step = sched.get("step") or 1
    start = _lr_at(tl, gid, first_step)
    end_first = _lr_at(tl, gid, first_step + int(per_epoch) - 1)
    last = traces[gid].final if gid in traces else None
    if start is None or end_first is None or last is None or not start > 0:
        return None
    if end_first >= start * (1 - 1e-9):
        return None  # the lr did not fall within the first epoch: not what is judged
    decays = per_epoch / size
    epochs = opt_steps / per_epoch
    per_epoch_factor = gamma**decays
    to_1pc = math.log(0.01) / math.log(per_epoch_factor) if per_epoch_factor < 1 else None
    name = f"StepLR(step_size={size}, gamma={gamma:g})"
    # Info: an iteration-sized StepLR ("x0.9 every 20 iterations") stepped per batch on purpose
    # looks the same to what is measured here (review: a healthy regression got a warning at
    # 0.39x over 3 epochs); an lr that really collapses is the collapse case's, loud there.
    return {
        "kind": "step_per_batch",
        "scheduler": sched,
        "severity": "info",
        "step": first_step + size,
        "step_size": size,
        "gamma": gamma,
        "scheduler_steps": n,
        "optimizer_steps": opt_steps,
        "epoch_steps": per_epoch,
        "epoch_batches": batches,
        "decays_per_epoch": round(decays, 2),
        "lr_start": start,
        "lr_after_first_epoch": end_first,
        "lr_last": last,
        "title": f"{name} is stepped at every optimizer step, {decays:.2g} times an epoch of "
        f"{per_epoch:g} steps: the lr fell {start:.3g} -> {end_first:.3g} within the first "
        f"epoch and to {last:.3g} ({last / start:.2g}x) over {epochs:.3g} epochs",
        "text": f"{name} was stepped {n} times for {opt_steps} optimizer steps ({epochs:.3g} "
        f"epochs of {per_epoch:g}): a step_size of {size} counted in steps is a fraction of an "
        f"epoch, so the lr is multiplied by {per_epoch_factor:.3g} every epoch"
        + (f" and is 1% of its start after {to_1pc:.3g} epochs" if to_1pc else "")
        + " (step_size sized in epochs, scheduler.step() in the batch loop?)",
    }


def _lr_at(tl: TimelineView, gid: str, step: int) -> float | None:
    lrs = tl.at("optim.lr", step)
    lr = (lrs or {}).get(gid) if isinstance(lrs, dict) else None
    return float(lr) if isinstance(lr, int | float) else None


def _fix(case: dict[str, Any]) -> str:
    kind = case["kind"]
    if kind == "collapse" and "epoch_arg" in case:
        return (
            "call scheduler.step() with no argument, once per epoch; to cut the lr when the "
            "loss stops improving use ReduceLROnPlateau and pass it the loss: "
            "scheduler.step(val_loss)"
        )
    if kind == "zero_frozen_group":
        return (
            "nothing to fix if the group is meant to stay frozen; otherwise give it a positive lr "
            "(or leave its params out of the optimizer and set requires_grad_(False))"
        )
    if kind == "zero":
        return (
            "give the group a positive lr: check the scheduler's lambda (use float arithmetic, "
            "min(1.0, (step + 1) / warmup)) and the lr passed to the optimizer"
        )
    if kind == "step_per_batch":
        return (
            "call scheduler.step() once per epoch, after the batch loop, as step_size counts "
            f"epochs; or size it in steps: StepLR(step_size={case['step_size']} * "
            "len(train_loader))"
        )
    if kind == "ahead_of_optimizer":
        return (
            "call scheduler.step() once per optimizer.step() (after it, outside the micro-batch "
            "loop); with a GradScaler, step the scheduler only when the scale did not drop"
        )
    return (
        "step the scheduler as it is sized: once per epoch (after the batch loop), or size it "
        "in batches (T_max / step_size / milestones × len(loader), OneCycleLR(total_steps=...))"
    )


def _group_of(tl: TimelineView, optimizer: str | None) -> str | None:
    return f"{optimizer}/group0" if optimizer else None


def _scheduler_of(schedulers: list[dict[str, Any]], gid: str | None) -> dict[str, Any] | None:
    if gid is None:
        return None
    opt = gid.split("/", 1)[0]
    return next((s for s in schedulers if s.get("optimizer") == opt), None)


def _opt_source(tl: TimelineView) -> str | None:
    opts = tl.fact("optimizers") or []
    return optimizer_source(opts[0]) if opts else None


def _downsample(trace: list[tuple[int, float]]) -> list[list[float]]:
    if len(trace) <= TRACE_POINTS:
        picked = trace
    else:
        idx = {round(i * (len(trace) - 1) / (TRACE_POINTS - 1)) for i in range(TRACE_POINTS)}
        picked = [trace[i] for i in sorted(idx)]
    return [[s, float(f"{lr:.4g}")] for s, lr in picked]

"""A long run's timeline stays bounded in memory (timeline_retention.py), keeps what rules
look for (the start, the end, the extremes, every non-finite value up to a cap), never drops
a record the stream has not written, and thins identically on identical runs."""

from __future__ import annotations

import math
import random

from traindoctor.timeline import Timeline
from traindoctor.timeline_retention import HEAD, NONFINITE_KEEP, TAIL
from traindoctor.timeline_store import TimelineWriter


def _long_run(steps: int, *, bounded: bool = True, seed: int = 0) -> Timeline:
    rng = random.Random(seed)
    tl = Timeline(bounded=bounded)
    for step in range(1, steps + 1):
        loss = 2.0 / math.sqrt(step) + 0.05 * rng.random()
        if step == 41_234:
            loss = 900.0  # a spike in the middle of the run
        if step == 63_001:
            loss = float("nan")
        tl.append(step, "loss.train", loss)
        tl.record(step, "optim.lr", {"0": 0.1})
        if step % 10 == 0:
            tl.record(step, "grads.norm", {f"layer{i}.weight": rng.random() for i in range(40)})
        if step % 25 == 0:
            tl.compact()
    return tl


def test_size_is_bounded_and_series_stay_in_step_order() -> None:
    short, long = _long_run(20_000), _long_run(100_000)
    # Five times the steps, about the same records held.
    assert long.size() < 1.2 * short.size()
    assert long.size() < 15_000
    for name in ("loss.train", "optim.lr", "grads.norm"):
        steps = [s for s, _ in long.series(name)]
        assert steps == sorted(steps)


def test_the_start_the_end_and_the_anomalies_are_kept() -> None:
    tl = _long_run(100_000)
    loss = dict(tl.series("loss.train"))
    assert all(s in loss for s in range(1, HEAD + 1))  # the head, exact
    assert all(s in loss for s in range(100_000 - TAIL + 1, 100_001))  # the tail, exact
    assert loss[41_234] == [900.0]  # the spike survived the thinning
    assert math.isnan(loss[63_001][0])  # and the NaN
    # The middle is thinned, not emptied: its lowest values are kept too.
    middle = [v[0] for s, v in loss.items() if HEAD < s <= 100_000 - TAIL]
    assert 100 < len(middle) < 5_000
    assert min(middle) < 2.0 / math.sqrt(90_000) + 0.01


def test_nonfinite_records_are_kept_up_to_the_cap() -> None:
    tl = Timeline()
    for step in range(1, 40_001):
        tl.append(step, "loss.train", float("nan") if step % 100 == 0 else 1.0)
        if step % 25 == 0:
            tl.compact()
    nan_steps = [s for s, v in tl.series("loss.train") if math.isnan(v[0])]
    # The first NONFINITE_KEEP of the middle stay whatever their bucket, so the first NaN of
    # the run and those after it are there.
    assert 100 in nan_steps and len(nan_steps) >= NONFINITE_KEEP


def test_identical_runs_keep_identical_records() -> None:
    a, b = _long_run(60_000, seed=3), _long_run(60_000, seed=3)
    for name in ("loss.train", "optim.lr", "grads.norm"):
        assert a.series(name) == b.series(name)


def test_unbounded_timeline_keeps_everything() -> None:
    tl = _long_run(12_000, bounded=False)
    assert len(tl.series("loss.train")) == 12_000


def test_records_not_yet_streamed_are_never_dropped(tmp_path) -> None:
    tl = Timeline()
    writer = TimelineWriter(tl, tmp_path / "timeline.jsonl")
    writer.flush()
    for step in range(1, 12_001):
        tl.append(step, "loss.train", 1.0 + step)
        if step % 25 == 0:
            tl.compact()  # no flush since the start: everything is still held
    assert len(tl.series("loss.train")) == 12_000
    writer.flush()
    tl.compact()
    assert len(tl.series("loss.train")) < 12_000
    writer.finish()
    # On disk, every record.
    loaded = Timeline.from_jsonl(tmp_path / "timeline.jsonl")
    assert loaded.last_step == tl.last_step


def test_a_long_streamed_run_loads_back_bounded(tmp_path) -> None:
    tl = Timeline()
    writer = TimelineWriter(tl, tmp_path / "timeline.jsonl")
    for step in range(1, 30_001):
        tl.append(step, "loss.train", 1.0 / step)
        tl.last_step = step
        if step % 25 == 0:
            writer.flush()
            tl.compact()
    writer.finish()
    tl.compact()
    loaded = Timeline.from_jsonl(tmp_path / "timeline.jsonl")
    assert loaded.size() < 6_000
    assert loaded.series("loss.train")[-1] == (30_000, [1.0 / 30_000])
    assert loaded.series("loss.train")[0] == (1, [1.0])


def test_the_widest_interval_between_passes_fits_in_the_exact_tail() -> None:
    from traindoctor.diagnosis_schedule import diagnose_due

    due = [s for s in range(5_000, 200_000) if diagnose_due(s)]
    assert max(b - a for a, b in zip(due, due[1:], strict=False)) <= TAIL


def _watched_run(tmp_path, bounded: bool, steps: int = 3_000) -> list[tuple[str, str, int]]:
    """A tiny MLP whose lr is raised 1000x late in the run (a loss that blows up)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    import traindoctor as td

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    doc = td.watch(model, opt, out_dir=tmp_path / str(bounded), console=False)
    doc.timeline.bounded = bounded
    for step in range(steps):
        if step == steps - 700:
            for group in opt.param_groups:
                group["lr"] = 50.0
        i = (step % 16) * 32
        opt.zero_grad()
        loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    report = doc.close()
    return sorted((f.code, str(f.severity), f.step) for f in report.findings)


def test_a_long_run_gets_the_verdict_it_gets_with_every_record_in_memory(
    tmp_path, monkeypatch
) -> None:
    # Mid-run passes are unaffordable on so small a model: the folds (made affordable here:
    # on a model whose step is ~1 ms they are) make the incremental rules (TD210 here) read
    # every record before the thinning, as a full timeline would.
    # Scaled down 10x (tail, head, folds) to thin a 3,000-step run as a 30,000-step one.
    from traindoctor import diagnosis_schedule, timeline_retention

    monkeypatch.setattr(timeline_retention, "TAIL", 205)
    monkeypatch.setattr(timeline_retention, "HEAD", 26)
    monkeypatch.setattr(timeline_retention, "BUCKETS", 13)
    monkeypatch.setattr(diagnosis_schedule, "FOLD_EVERY", 100)
    monkeypatch.setattr(diagnosis_schedule, "FOLD_PER_STEP_S", 0.0)  # affordable on any model
    bounded = _watched_run(tmp_path, True)
    assert bounded == _watched_run(tmp_path, False)
    assert "TD210" in {code for code, _, _ in bounded}

"""ScheduleProbe: scheduler steps and facts, autocast dtype, L0 gradient counts, clipping."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import lr_scheduler

from tests._loop import batches, make_model, watch
from traindoctor.probes import schedule


def _run(tmp_path, *, watched=True, accum=1, dtype=None, clip=None, steps=12):
    torch.manual_seed(0)
    model = make_model(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)  # built before watch()
    doc = watch(model, opt, tmp_path) if watched else None
    for i, (x, y) in enumerate(batches(steps * accum), 1):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        sched.step()  # per micro-batch
        if i % accum == 0:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad()
    if doc is not None:
        doc.close()
    return doc, model


def test_scheduler_seen_with_its_settings_and_steps_counted(tmp_path):
    doc, _ = _run(tmp_path, accum=2)
    tl = doc.timeline
    (event,) = tl.events("lr_scheduler")
    assert event["cls"] == "StepLR"
    assert event["settings"]["step_size"] == 3 and event["settings"]["gamma"] == 0.5
    assert event["source"].endswith("test_schedule.py:" + str(_line("sched.step()")))
    total = sum(c["sched0"] for _, c in tl.series("schedule.steps"))
    assert total == 24  # 2 per optimizer step: the constructor's own step is not counted


def test_oracle_nonzero_gradient_counts_under_fp16(tmp_path):
    counts = {}
    torch.manual_seed(0)
    model = make_model(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, opt, tmp_path)

    def oracle(optimizer, args, kwargs):  # brute force, right before the step
        for name, p in model.named_parameters():
            counts.setdefault(name, []).append(int((p.grad != 0).sum()))

    opt.register_step_pre_hook(oracle)
    for x, y in batches(10):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = 1e-6 * nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    doc.close()
    series = dict(doc.timeline.series("schedule.grad_nonzero"))
    assert sorted(series) == [1, 2, 3, 10]  # first and sampled steps
    for step, per_param in series.items():
        for name, n in per_param.items():
            assert n == counts[name][step - 1]
    assert {v for _, d in doc.timeline.series("schedule.autocast") for v in d.values()} == {
        "float16"
    }


def test_bf16_records_dtype_but_no_gradient_counts(tmp_path):
    doc, _ = _run(tmp_path, dtype=torch.bfloat16)
    assert {d["cpu"] for _, d in doc.timeline.series("schedule.autocast")} == {"bfloat16"}
    assert not doc.timeline.series("schedule.grad_nonzero")


def test_clip_norms_recorded(tmp_path):
    doc, _ = _run(tmp_path, clip=0.5, steps=5)
    tl = doc.timeline
    assert [v for _, vs in tl.series("schedule.clip_max") for v in vs] == [0.5] * 5
    norms = [v for _, vs in tl.series("schedule.clip_norm") for v in vs]
    assert len(norms) == 5 and all(v > 0 for v in norms)


def test_tensor_divisor_recorded(tmp_path):
    model = make_model(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, opt, tmp_path)
    for x, y in batches(3):
        n = torch.tensor(float(len(y)))
        (nn.functional.cross_entropy(model(x), y, reduction="sum") / n).backward()
        (nn.functional.cross_entropy(model(x), y) / 4).backward()  # a constant: not counted
        opt.step()
        opt.zero_grad()
    doc.close()
    assert dict(doc.timeline.series("schedule.tensor_divided")) == {1: 1, 2: 1, 3: 1}


def test_patch_removed_and_training_bit_identical(tmp_path):
    originals = {c: c.__dict__["step"] for c in schedule._scheduler_classes()}
    _, watched = _run(tmp_path, accum=2, clip=1.0)
    assert {c: c.__dict__["step"] for c in schedule._scheduler_classes()} == originals
    assert not schedule._sched_listeners
    _, plain = _run(tmp_path, watched=False, accum=2, clip=1.0)
    for a, b in zip(watched.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def _line(marker: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(_run)
    return start + next(i for i, t in enumerate(lines) if marker in t)

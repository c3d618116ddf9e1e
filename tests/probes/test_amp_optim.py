"""AmpProbe and OptimProbe: scaler scale, skipped steps, learning rates, optimizer facts."""

from __future__ import annotations

import torch
from torch import nn

from tests._loop import batches, make_model, watch


def _amp_run(tmp_path, steps=30, bad_step=5):
    model = make_model(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    doc = watch(model, opt, tmp_path, scaler=scaler)
    used, stepped = {}, []
    for step, (x, y) in enumerate(batches(steps), 1):
        opt.zero_grad()
        if step == bad_step:
            x = x * float("inf")  # non-finite gradients: the scaler skips this step
        loss = nn.functional.cross_entropy(model(x), y)
        used[step] = scaler.get_scale()
        scaler.scale(loss).backward()
        before = model[0].weight.detach().clone()
        scaler.step(opt)
        scaler.update()
        if not torch.equal(before, model[0].weight):
            stepped.append(step)
    doc.close()
    return doc, used, stepped


def test_skipped_step_is_recorded(tmp_path):
    doc, used, stepped = _amp_run(tmp_path)
    assert 5 not in stepped
    tl = doc.timeline
    assert dict(tl.series("amp.skipped")) == {5: 1}
    assert sorted(s for s, _ in tl.series("optim.step")) == stepped
    # the step count still advances past the skipped step
    assert tl.last_step == 30
    assert doc.report.internal_errors == []
    assert "TD105" not in doc.report.codes


def test_recorded_scale_is_the_scale_of_that_step(tmp_path):
    doc, used, _ = _amp_run(tmp_path)
    scale = dict(doc.timeline.series("amp.scale"))
    assert sorted(scale) == list(range(1, 31))
    for step in range(1, 31):
        if step == 5:
            continue  # before or after update(): both readings are defensible at the skip
        assert scale[step] == used[step], (step, scale[step], used[step])


def test_lr_is_recorded_per_group_at_every_step(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1},
            {"params": model[3].parameters(), "lr": 0.01},
        ]
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    doc = watch(model, opt, tmp_path)
    expected = {}
    for step, (x, y) in enumerate(batches(6), 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        expected[step] = {f"opt0/group{i}": g["lr"] for i, g in enumerate(opt.param_groups)}
        opt.step()
        sched.step()
    doc.close()
    assert dict(doc.timeline.series("optim.lr")) == expected
    groups = doc.timeline.facts["optimizers"][0]["groups"]
    assert [g["params"] for g in groups] == [["0.weight", "0.bias"], ["3.weight", "3.bias"]]
    assert [g["initial_lr"] for g in groups] == [0.1, 0.01]
    assert doc.timeline.facts["optimizers"][0]["class"] == "SGD"

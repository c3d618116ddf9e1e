"""The modes probe: mode switches with their lines, inference_mode regions (context manager and
decorator), validation forwards, fingerprints; patches restored; training unchanged."""

from __future__ import annotations

import copy
import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.probes.modes import ModesProbe, mode_sensitive


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2)
    )


def _train(doc_factory=None, steps=12):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    doc = doc_factory(model, opt) if doc_factory else None
    g = torch.Generator().manual_seed(1)
    ema = copy.deepcopy(model)
    for step in range(1, steps + 1):
        x = torch.randn(16, 4, generator=g)
        y = torch.randint(0, 2, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step % 4 == 0:
            if doc is not None:
                with doc.validating(ema):
                    ema(x)
            model.eval()
            with torch.inference_mode():
                model(x)
            model.train()
    return model, doc


def test_training_is_bit_identical_and_patches_are_restored(tmp_path):
    train_fn, enter = torch.nn.Module.train, torch.inference_mode.__enter__
    plain, _ = _train()
    watched, doc = _train(lambda m, o: td.watch(m, o, out_dir=tmp_path, console=False))
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(plain.buffers(), watched.buffers()):
        assert torch.equal(a, b)
    assert torch.nn.Module.train is train_fn and torch.inference_mode.__enter__ is enter
    calls = report.timeline.events("mode_call")
    lines, start = inspect.getsourcelines(_train)
    eval_line = start + next(i for i, t in enumerate(lines) if "model.eval()" in t)
    assert calls and calls[0]["training"] is False and calls[0]["root"] is True
    assert calls[0]["source"].endswith(f"test_modes.py:{eval_line}")
    assert not report.timeline.events("validation_in_train_mode")
    fps = report.timeline.series("modes.validated_fingerprint")
    assert len(fps) == 3 and all(len(v[0]) == 6 for _, v in fps)  # 6 params each
    assert all(not e["is_trained_model"] for e in report.timeline.events("validated_model"))


def test_a_failing_listener_never_breaks_the_users_call(tmp_path, monkeypatch):
    def boom(*_args):
        raise RuntimeError("probe bug")

    monkeypatch.setattr(ModesProbe, "_on_train_call", boom)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    assert model.eval() is model and not model[1].training
    model.train()
    report = doc.close()
    assert any("probe bug" in e["error"] for e in report.internal_errors)


def test_inference_mode_decorator_region_is_seen_and_fused_params_reported(tmp_path):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    x = torch.randn(8, 4)
    F.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
    opt.step()

    @torch.inference_mode()
    def rebuild_head(m):
        m[4] = nn.Linear(8, 2)  # new params created under inference_mode
        return m(x)

    rebuild_head(model)
    report = doc.close()
    (event,) = report.timeline.events("inference_tensors")
    assert sorted(event["params"]) == ["4.bias", "4.weight"] and event["in_optimizer"] == []
    assert event["region_source"] and "test_modes.py" in event["region_source"]
    assert report.findings[0].code == "TD401"


def test_mode_sensitive_modules():
    assert mode_sensitive(nn.BatchNorm2d(3)) and mode_sensitive(nn.Dropout(0.1))
    assert not mode_sensitive(nn.Dropout(0.0)) and not mode_sensitive(nn.LayerNorm(3))
    assert not mode_sensitive(nn.InstanceNorm2d(3)) and mode_sensitive(
        nn.InstanceNorm2d(3, track_running_stats=True)
    )


def test_validating_the_trained_model_itself_is_known_as_such(tmp_path):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    with doc.validating(model):
        model(torch.randn(4, 4))
    with doc.validating(copy.deepcopy(model)):
        pass
    report = doc.close()
    flags = [e["is_trained_model"] for e in report.timeline.events("validated_model")]
    assert flags == [True, False]


def test_an_inference_buffer_set_between_steps_is_found_on_a_sampled_step(tmp_path):
    """The scan reads each module's buffer dict (no named_buffers() walk): a buffer made in
    inference mode and registered on an existing module between steps is still named."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=str(tmp_path), console=False)
    g = torch.Generator().manual_seed(1)
    for step in range(1, 25):
        if step == 4:
            with torch.inference_mode():
                model[4].register_buffer("seen", torch.zeros(2))
        opt.zero_grad()
        F.cross_entropy(
            model(torch.randn(16, 4, generator=g)), torch.randint(0, 2, (16,))
        ).backward()
        opt.step()
    doc.close()
    found = doc.timeline.events("inference_tensors")
    assert found and found[0]["buffers"] == ["4.seen"]

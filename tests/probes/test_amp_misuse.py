"""AmpProbe misuse tracking: GradScaler stage at clip/step/backward, removable patches, and
training that stays bit-identical with the clip and GradScaler patches in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traindoctor as td
from tests._loop import assert_bit_identical, batches, make_model, params_of, watch

ORIGINALS = {
    "utils.clip_grad_norm_": torch.nn.utils.clip_grad_norm_,
    "utils.clip_grad_value_": torch.nn.utils.clip_grad_value_,
    "clip_grad.clip_grad_norm_": torch.nn.utils.clip_grad.clip_grad_norm_,
    "clip_grad.clip_grad_value_": torch.nn.utils.clip_grad.clip_grad_value_,
    "GradScaler.unscale_": torch.amp.GradScaler.__dict__["unscale_"],
    "GradScaler.step": torch.amp.GradScaler.__dict__["step"],
}


def _current():
    return {
        "utils.clip_grad_norm_": torch.nn.utils.clip_grad_norm_,
        "utils.clip_grad_value_": torch.nn.utils.clip_grad_value_,
        "clip_grad.clip_grad_norm_": torch.nn.utils.clip_grad.clip_grad_norm_,
        "clip_grad.clip_grad_value_": torch.nn.utils.clip_grad.clip_grad_value_,
        "GradScaler.unscale_": torch.amp.GradScaler.__dict__["unscale_"],
        "GradScaler.step": torch.amp.GradScaler.__dict__["step"],
    }


def _loop(model, opt, scaler, steps, order, accum=1, value_clip=False):
    data = batches(steps * accum)
    norms = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        for k in range(accum):
            x, y = data[step * accum + k]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            scaler.scale(loss / accum).backward()
            if order == "unscale_each" and k == 0:
                scaler.unscale_(opt)
        if order == "healthy":
            scaler.unscale_(opt)
        if value_clip:
            torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
        else:
            # a generator, as most scripts pass it
            norms.append(torch.nn.utils.clip_grad_norm_((p for p in model.parameters()), 1.0))
        if order == "bypass":
            opt.step()
            continue
        scaler.step(opt)
        scaler.update()
    return norms


@pytest.mark.parametrize("order", ["healthy", "clip_scaled", "unscale_each", "bypass"])
def test_bit_identical_and_restored(order, tmp_path):
    runs = {}
    for watched in (False, True):
        model = make_model(dropout=0.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        doc = watch(model, opt, tmp_path, scaler=scaler) if watched else None
        norms = _loop(model, opt, scaler, 12, order, accum=2)
        if doc is not None:
            assert _current() != ORIGINALS  # patched while watching
            doc.close()
            assert not doc.report.internal_errors, doc.report.internal_errors
            runs["doc"] = doc
        runs[watched] = (params_of(model), [n.item() for n in norms])
    assert_bit_identical(runs[False][0], runs[True][0])
    assert runs[False][1] == runs[True][1]  # clip_grad_norm_ returns what it returned
    assert _current() == ORIGINALS
    events = runs["doc"].timeline.events("amp_misuse")
    expected = {
        "healthy": set(),
        "clip_scaled": {"clip_grad_norm_"},
        "unscale_each": {"backward_after_unscale"},
        "bypass": {"optimizer.step", "clip_grad_norm_"},
    }[order]
    assert {e["what"] for e in events} == expected
    for e in events:
        assert e["source"] and e["source"].startswith("tests/probes/test_amp_misuse.py:")


def test_clip_value_on_scaled_grads_is_measured(tmp_path):
    model = make_model(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    doc = watch(model, opt, tmp_path, scaler=scaler)
    _loop(model, opt, scaler, 4, "clip_scaled", value_clip=True)
    doc.close()
    f = next(f for f in doc.report.findings if f.code == "TD204")
    assert f.where.op == "clip_grad_value_"
    assert f.evidence["scale"] == 2.0**10
    assert f.evidence["effective_clip_value"] == 0.5 / 2**10


def test_skipped_steps_name_the_params_with_nonfinite_grads(tmp_path):
    model = make_model(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    doc = watch(model, opt, tmp_path, scaler=scaler)
    for step, (x, y) in enumerate(batches(6), 1):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if step >= 3:
            # NaN gradient into the last layer's weight only (0 * inf in its backward)
            loss = loss + (model[3].weight.sum() * 0.0).sqrt() * 0.0
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    doc.close()
    marks = dict(doc.timeline.series("amp.nonfinite"))
    assert set(marks) <= {3, 4, 5, 6} and {4, 5, 6} <= set(marks)  # step 3 only if sampled
    for step in (4, 5, 6):
        assert marks[step]["3.weight"] == 1.0
        assert marks[step]["0.weight"] == 0.0


def test_two_doctors_share_the_patches(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    a = td.watch(model, opt, out_dir=tmp_path / "a", console=False)
    b = td.watch(model, opt, out_dir=tmp_path / "b", console=False)
    a.close()
    assert _current() != ORIGINALS
    b.close()
    assert _current() == ORIGINALS


def test_zero_code_bit_identical_and_restored(tmp_path):
    from traindoctor.doctor import Doctor
    from traindoctor.integrations.autopatch import attached

    runs = []
    for zero_code in (False, True):
        model = make_model(dropout=0.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        if zero_code:
            doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
            with attached(doctor):
                _loop(model, opt, scaler, 8, "clip_scaled", accum=2)
            doctor.close()
            assert not doctor.report.internal_errors
            assert "TD204" in doctor.report.codes
        else:
            _loop(model, opt, scaler, 8, "clip_scaled", accum=2)
        runs.append(params_of(model))
    assert_bit_identical(*runs)
    assert _current() == ORIGINALS

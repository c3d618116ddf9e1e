"""LossProbe: recorded loss values and scale factors against what the loop computed."""

from __future__ import annotations

import pytest
import torch

from tests._loop import OPTIMIZERS, Oracle, batches, make_model, make_scaler, train, watch
from traindoctor.probes.loss import constant_factor


@pytest.mark.parametrize("scaler_kind", [None, "disabled", "enabled"])
def test_backward_values_equal_the_loss(tmp_path, scaler_kind):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    scaler = make_scaler(scaler_kind)
    doc = watch(model, opt, tmp_path, scaler=scaler)
    oracle = Oracle()
    train(model, opt, 30, doc=doc, scaler=scaler, oracle=oracle)
    doc.close()
    series = dict(doc.timeline.series("loss.backward"))
    assert sorted(series) == list(range(1, 31))
    for step, values in series.items():
        assert values == pytest.approx(oracle.losses[step], rel=1e-6), step
    assert dict(doc.timeline.series("backward.count")) == dict.fromkeys(range(1, 31), 1)
    assert all(f == [1.0] for _, f in doc.timeline.series("loss.factor"))


def test_accumulation_records_the_unscaled_loss_and_the_factor(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    doc = watch(model, opt, tmp_path)
    oracle = Oracle()
    train(model, opt, 5, doc=doc, accum=4, oracle=oracle)
    doc.close()
    for step, values in doc.timeline.series("loss.backward"):
        assert values == pytest.approx(oracle.losses[step], rel=1e-6)
    assert dict(doc.timeline.series("loss.factor")) == {s: [0.25] * 4 for s in range(1, 6)}
    assert dict(doc.timeline.series("backward.count")) == dict.fromkeys(range(1, 6), 4)
    assert "TD109" not in doc.report.codes and "TD105" not in doc.report.codes


def test_logged_train_and_validation_losses(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    doc = watch(model, opt, tmp_path)
    oracle = Oracle()
    train(model, opt, 6, doc=doc, log=True, validate_every=2, oracle=oracle)
    doc.close()
    train_series = dict(doc.timeline.series("loss.train"))
    for step, values in train_series.items():
        assert values == pytest.approx(oracle.losses[step], rel=1e-6)
    val = doc.timeline.series("loss.val")
    # validation runs after step s's optimizer step, i.e. while step s + 1 is open
    assert [s for s, _ in val] == [3, 5, 7]
    assert [e["index"] for e in doc.timeline.events("validation")] == [1, 2, 3]


@pytest.mark.parametrize(
    ("build", "factor"),
    [
        (lambda t: t / 4, 0.25),
        (lambda t: t * 0.5, 0.5),
        (lambda t: (t / 2) / 4, 0.125),
        (lambda t: t, 1.0),
        (lambda t: t / t.detach().abs().sum(), 1.0),  # a tensor divisor is data, not a constant
    ],
)
def test_constant_factor(build, factor):
    w = torch.randn(3, requires_grad=True)
    loss = build(w.pow(2).sum() + 1)
    assert constant_factor(loss)[0] == pytest.approx(factor)


@pytest.mark.parametrize(
    "call",
    [
        lambda loss: loss.backward(),
        lambda loss: torch.autograd.backward(loss),
        lambda loss: torch.autograd.backward([loss]),
    ],
    ids=["Tensor.backward", "autograd.backward", "autograd.backward-list"],
)
def test_every_backward_entry_point_is_seen_once(tmp_path, call):
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    doc = watch(model, opt, tmp_path)
    losses = []
    for x, y in batches(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        losses.append(loss.item())
        call(loss)
        opt.step()
    doc.close()
    assert dict(doc.timeline.series("backward.count")) == {1: 1, 2: 1, 3: 1}
    values = [v for _, vs in doc.timeline.series("loss.backward") for v in vs]
    assert values == pytest.approx(losses, rel=1e-6)


@pytest.mark.parametrize(
    "logged",
    [lambda loss: loss, lambda loss: loss.detach(), lambda loss: loss.item()],
    ids=["tensor", "detached", "item"],
)
def test_loss_logged_after_step_belongs_to_its_own_step(tmp_path, logged):
    # `backward(); step(); doc.log(loss=...)`: the step has closed when log() runs.
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    doc = watch(model, opt, tmp_path)
    losses = {}
    for step, (x, y) in enumerate(batches(4), start=1):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        doc.log(loss=logged(loss))
        losses[step] = loss.item()
    doc.close()
    series = dict(doc.timeline.series("loss.train"))
    assert sorted(series) == [1, 2, 3, 4]
    for step, values in series.items():
        assert values == pytest.approx([losses[step]], rel=1e-6)


def test_loss_logged_before_backward_stays_in_the_open_step(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    doc = watch(model, opt, tmp_path)
    for x, y in batches(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        doc.log(loss=loss)
        loss.backward()
        opt.step()
    doc.close()
    assert sorted(dict(doc.timeline.series("loss.train"))) == [1, 2, 3]


def test_backward_of_an_unwatched_model_is_not_a_graphless_loss(tmp_path):
    # Only the student is watched; a separately trained model's backward is not TD101.
    student, other = make_model(), make_model(seed=1)
    opt_s = OPTIMIZERS["sgd-momentum"](student)
    opt_o = OPTIMIZERS["sgd-momentum"](other)
    doc = watch(student, opt_s, tmp_path)
    for x, y in batches(4):
        for model, opt in ((student, opt_s), (other, opt_o)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    doc.close()
    assert "TD101" not in doc.report.codes


def test_loss_rewrapped_as_a_leaf_reaches_no_parameter(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    doc = watch(model, opt, tmp_path)
    for x, y in batches(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x).detach(), y).requires_grad_(True)
        (loss * 1.0).backward()
        opt.step()
    doc.close()
    f = doc.report.get("TD101")
    assert f is not None and f.step == 1
    assert f.evidence["graph_leaves"] == [[]]

"""Detaching restores the model, the optimizer, the scaler and torch itself exactly; watching
never changes the training (parameters bit-identical to a plain run)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests._loop import (
    OPTIMIZERS,
    assert_bit_identical,
    assert_detached,
    make_model,
    make_scaler,
    params_of,
    train,
    watch,
)
from traindoctor import _patches


@pytest.mark.parametrize("scaler_kind", [None, "disabled", "enabled"])
def test_close_removes_every_hook(tmp_path, scaler_kind):
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    scaler = make_scaler(scaler_kind)
    doc = watch(model, opt, tmp_path, scaler=scaler)
    assert torch.Tensor.backward is not _loop_original()
    assert opt._optimizer_step_pre_hooks and opt._optimizer_step_post_hooks
    assert model[0]._forward_hooks
    train(model, opt, 2, doc=doc, scaler=scaler)  # close in the structural phase: hooks still on
    doc.close()
    assert_detached(model, opt, scaler)
    assert not _patches.is_patched()
    if scaler is not None:
        assert type(scaler).scale is torch.amp.GradScaler.scale
        assert scaler.scale.__func__ is torch.amp.GradScaler.scale


def test_close_after_an_exception_mid_step_removes_every_hook(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    doc = watch(model, opt, tmp_path)

    def boom(step):
        if step == 10:
            model(torch.randn(2, 6)).sum().backward()  # a backward left open, then the loop dies
            raise RuntimeError("user bug")

    with pytest.raises(RuntimeError, match="user bug"):
        train(model, opt, 12, doc=doc, on_step=boom)
    doc.close()
    assert_detached(model, opt)


def test_per_step_hooks_are_gone_after_the_structural_phase(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    doc = watch(model, opt, tmp_path)
    seen = {}

    def look(step):
        # After step 3 closes, the per-module forward hooks are removed; only the root keeps
        # the numerics probe's hook (references to dL/d output, for an autopsy), the modes
        # probe's (one is_grad_enabled() check: validation forwards in train mode) and the data
        # probe's (a few fused statistics of the batch on the first forward of a step). Gradients
        # are read from the backward listener with fused ops: no per-parameter hook, ever.
        seen[step] = (
            sum(len(m._forward_hooks) for m in model.modules() if m is not model),
            len(model._forward_hooks),
            sum(len(p._backward_hooks or {}) for p in model.parameters()),
        )

    train(model, opt, 5, doc=doc, on_step=look)
    doc.close()
    assert seen[3] == (0, 3, 0)
    assert seen[4] == (0, 3, 0)
    assert seen[1][0] > 0 and seen[1][2] == 0


def test_two_doctors_restore_backward_only_when_both_are_closed(tmp_path):
    m1, m2 = make_model(), make_model(seed=1)
    o1, o2 = OPTIMIZERS["adamw"](m1), OPTIMIZERS["adamw"](m2)
    d1 = watch(m1, o1, tmp_path / "a")
    d2 = watch(m2, o2, tmp_path / "b")
    d1.close()
    assert _patches.is_patched()
    train(m2, o2, 2, doc=d2)
    d2.close()
    assert_detached(m1, o1)
    assert_detached(m2, o2)


def _loop_original():
    from tests._loop import ORIGINAL_BACKWARD

    return ORIGINAL_BACKWARD


CONFIGS = [
    pytest.param(opt, scaler, accum, id=f"{opt}-{scaler or 'noscaler'}-accum{accum}")
    for opt in sorted(OPTIMIZERS)
    for scaler in (None, "disabled", "enabled")
    for accum in (1, 2)
    if not (accum == 2 and scaler == "disabled")
]


@pytest.mark.parametrize(("opt_name", "scaler_kind", "accum"), CONFIGS)
def test_params_bit_identical_with_and_without_watch(tmp_path, opt_name, scaler_kind, accum):
    steps = 50

    def run(watched: bool) -> list[torch.Tensor]:
        model = make_model()
        opt = OPTIMIZERS[opt_name](model)
        scaler = make_scaler(scaler_kind)
        torch.manual_seed(123)  # dropout masks
        doc = watch(model, opt, tmp_path, scaler=scaler) if watched else None
        train(model, opt, steps, doc=doc, scaler=scaler, accum=accum, log=True, validate_every=10)
        if doc is not None:
            report = doc.close()
            assert report.internal_errors == []
            assert report.steps == steps
        return params_of(model)

    plain, watched = run(False), run(True)
    assert not all(torch.equal(a, b) for a, b in zip(plain, params_of(make_model())))
    assert_bit_identical(plain, watched)


def test_rng_stream_is_untouched(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    torch.manual_seed(7)
    doc = watch(model, opt, tmp_path)
    train(model, opt, 12, doc=doc)
    doc.close()
    watched_next = torch.rand(4)
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    torch.manual_seed(7)
    train(model, opt, 12)
    assert torch.equal(watched_next, torch.rand(4))


def test_validating_restores_each_module_mode(tmp_path):
    model = make_model()
    model[2].eval()  # a deliberately frozen dropout
    opt = OPTIMIZERS["adamw"](model)
    doc = watch(model, opt, tmp_path)
    with doc.validating(model):
        assert not any(m.training for m in model.modules())
        assert not torch.is_grad_enabled()
        out = model(torch.randn(2, 6))
    assert not out.is_inference()
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    doc.close()


def test_watch_with_unused_module_keeps_params_identical(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)

    def run(watched):
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        doc = watch(net, opt, tmp_path) if watched else None
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            opt.zero_grad()
            net(torch.randn(3, 4, generator=g)).pow(2).mean().backward()
            opt.step()
        if doc:
            assert "TD102" in doc.close().codes
        return params_of(net)

    assert_bit_identical(run(False), run(True))


def test_scaler_attributes_are_restored_exactly(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def users_update(*args, **kwargs):  # the user's own instance-level override
        return type(scaler).update(scaler, *args, **kwargs)

    scaler.update = users_update
    d1 = watch(model, opt, tmp_path / "a", scaler=scaler)
    d2 = watch(model, opt, tmp_path / "b", scaler=scaler)
    d1.close()  # d2's wrappers must survive d1
    assert scaler.__dict__["update"] is not users_update
    d2.close()
    assert scaler.__dict__["update"] is users_update
    assert "scale" not in scaler.__dict__

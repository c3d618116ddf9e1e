"""After the last doctor closes, every attribute traindoctor replaced in torch (and in the
libraries it watches) `is` its original again, and no hook of ours is left in torch's global
hook dicts: every process-wide patch goes through _patching.py, so this is checked in one
place, on a run that switches on every one of them (watch and zero-code, a GradScaler,
a scheduler, clipping, losses, a DataLoader, hand-written updates, jit scripting): the
registry's targets while attached, and torch's attributes by snapshot. Nested doctors keep
the patches until the last closes; a user's patch on top of ours survives our detach."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as module_globals
from torch.utils.data import DataLoader, TensorDataset

import traindoctor as td
from traindoctor._patching import MISSING, patched_targets
from traindoctor.doctor import Doctor
from traindoctor.integrations.autopatch import attached


def _owners() -> list[object]:
    import torch.jit._recursive as jit_recursive
    import torch.optim.lr_scheduler as lr_scheduler

    owners: list[object] = [
        torch.Tensor,
        torch.nn.Parameter,
        torch.autograd,
        F,
        torch._C._nn,
        torch.nn.utils,
        torch.nn.utils.clip_grad,
        torch.amp.GradScaler,
        torch.optim.Optimizer,
        DataLoader,
        jit_recursive,
        torch.no_grad,
        torch.enable_grad,
        torch.inference_mode,
        torch.set_grad_enabled,
    ]
    stack = [torch.nn.Module, lr_scheduler.LRScheduler]
    while stack:  # every Module subclass (their __getstate__) and every scheduler class
        cls = stack.pop()
        owners.append(cls)
        stack.extend(cls.__subclasses__())
    for name in ("sklearn.metrics", "torchmetrics.functional"):
        try:
            owners.append(__import__(name, fromlist=["_"]))
        except ImportError:
            pass
    return owners


def _snapshot() -> dict[tuple[int, str], object]:
    return {(id(o), k): v for o in _owners() for k, v in list(vars(o).items())}


GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _global_hooks() -> dict[str, int]:
    return {n: len(getattr(module_globals, n, {})) for n in GLOBAL_HOOKS}


def _train(doc_log=None) -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
    scaler = torch.amp.GradScaler("cpu")
    loader = DataLoader(TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,))), 16)
    for x, y in loader:
        out = model(x)
        loss = F.cross_entropy(out, y) + 0.1 * F.mse_loss(out, torch.zeros_like(out))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        if doc_log is not None:
            doc_log(loss=loss)
    torch.jit.script(model.eval())
    model.train()
    # Hand-written updates (Tensor.data is watched while a hand-written loop is possible).
    w = torch.randn(4, requires_grad=True)
    for _ in range(3):
        (w * w).sum().backward()
        w.data.add_(w.grad, alpha=-0.1)
        w.grad.zero_()
    with torch.inference_mode():
        model.eval()(torch.randn(2, 6))
    return model


def _check_registry(before: dict[tuple[int, str], object], during: list) -> None:
    """What the registry saved is what was there before any doctor, and it is back."""
    assert not patched_targets(), patched_targets()
    snapshotted = {owner for owner, _ in before}  # (classes imported since are not in it)
    for entry in during:
        key = (id(entry.owner), entry.attribute)
        if id(entry.owner) in snapshotted:
            assert entry.before is before.get(key, MISSING), key
        assert vars(entry.owner).get(entry.attribute, MISSING) is entry.before, key


def _watch(tmp_path, name: str = "run"):
    model = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return td.watch(model, opt, out_dir=tmp_path / name, console=False)


def test_watch_restores_every_patched_attribute(tmp_path):
    assert not patched_targets()
    before, hooks = _snapshot(), _global_hooks()
    torch.manual_seed(0)
    doc = _watch(tmp_path)
    _train(doc.log)
    during, targets = _snapshot(), patched_targets()
    # The check sees the patches: Tensor.backward, the losses, clipping, the scaler, the
    # schedulers, DataLoader.__iter__, Module.__getstate__, jit's scripting, ...
    assert sum(during.get(k) is not v for k, v in before.items()) >= 30
    # ... and each of them is in the registry.
    assert {(id(e.owner), e.attribute) for e in targets} >= {
        k for k, v in before.items() if during.get(k) is not v
    }
    doc.close()
    after = _snapshot()
    changed = [k for k in before if after.get(k) is not before[k]]
    assert not changed, changed
    _check_registry(before, targets)
    assert _global_hooks() == hooks


@pytest.mark.parametrize("close_first", ["first", "second"])
def test_nested_doctors_keep_patches_until_the_last_closes(tmp_path, close_first):
    before = _snapshot()
    torch.manual_seed(0)
    first = _watch(tmp_path, "first")
    _train(first.log)
    second = _watch(tmp_path, "second")
    _train(second.log)
    targets = patched_targets()
    backward = torch.Tensor.backward
    assert vars(torch.Tensor)["backward"] is not before[(id(torch.Tensor), "backward")]
    (first if close_first == "first" else second).close()
    # The other doctor still listens: every patch is still in place, the same objects.
    assert torch.Tensor.backward is backward
    assert [(e.owner, e.attribute, e.ours) for e in patched_targets()] == [
        (e.owner, e.attribute, e.ours) for e in targets
    ]
    (second if close_first == "first" else first).close()
    after = _snapshot()
    assert not [k for k in before if after.get(k) is not before[k]]
    _check_registry(before, targets)


def test_user_patch_on_top_of_ours_survives_detach(tmp_path):
    original = F.mse_loss
    doc = _watch(tmp_path)
    ours = F.mse_loss
    assert ours is not original

    def users_mse(*args, **kwargs):  # e.g. a library's logging wrapper, installed after watch()
        return ours(*args, **kwargs)

    F.mse_loss = users_mse
    try:
        _train(doc.log)
        doc.close()
        assert F.mse_loss is users_mse  # not clobbered by our restore
        assert not patched_targets()
        x = torch.randn(4)
        assert torch.equal(F.mse_loss(x, x * 0), original(x, x * 0))  # ours passes through
    finally:
        F.mse_loss = original


def test_zero_code_restores_every_patched_attribute(tmp_path):
    before, hooks = _snapshot(), _global_hooks()
    torch.manual_seed(0)
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        _train()
    doctor.close()
    after = _snapshot()
    changed = [k for k in before if after.get(k) is not before[k]]
    added = [k for k in after if k not in before]
    assert not changed, changed
    assert not added, added
    assert not patched_targets()
    assert _global_hooks() == hooks

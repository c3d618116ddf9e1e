"""A user's operations on a watched model, optimizer and scheduler work exactly as without
traindoctor, written as the programs that do them are (a detectron-style checkpointer, timm's
ModelEmaV2, an HF-style fine-tune that unfreezes its backbone, a research script that re-inits a
head mid-run, a loop that rolls back on a bad step, code that empties `_forward_hooks`).

Each program runs three times in this process, as tests/test_user_patterns.py's do: plainly,
under `td.watch` and inside `traindoctor run`'s discovery hooks; what it computed (states, lrs,
outputs, the bytes it saved, the exceptions it raised with their innermost frame, the RNG
streams) must be equal bit for bit, with no internal error recorded. The same programs run as
one script under `traindoctor run` in test_user_operations_scripts.py.
"""

from __future__ import annotations

import copy
import io
import pickle
import random
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traindoctor as td

from ..test_user_patterns import Attach, _opt_state, _state, check

torch.set_num_threads(1)


def _saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _raised(fn: Callable[[], Any]) -> Any:
    """The exception fn raised (BaseException included): type, message and innermost frame."""
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001  (KeyboardInterrupt is one of the results)
        top = traceback.extract_tb(exc.__traceback__)[-1]
        return (type(exc).__name__, str(exc), top.filename, top.lineno, top.name)
    return "nothing raised"


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU())
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.stem(x)))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step % 4)
    return torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g)


# -- detectron2-style Checkpointer: periodic checkpoints, resume from one ---------------------
def detectron_checkpointer(attach: Attach) -> Any:
    model = Backbone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[3])
    files: dict[str, Any] = {}
    lrs = []
    with attach(model, opt):
        for it in range(10):
            x, y = _batch(it)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            lrs.append(sched.get_last_lr())
            if it == 5:  # Checkpointer.save: a dict of state dicts, and the objects whole
                files["ckpt"] = _saved(
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "iteration": it,
                    }
                )
                files["model"] = _saved(model)
                files["optimizer"] = _saved(opt)
                files["scheduler"] = _saved(sched)
                # pickle keys storages by address (differs run to run): compared loaded
                files["pickle"] = _state(pickle.loads(pickle.dumps(model)))
    # Resume from the iteration-5 checkpoint into fresh objects and train on, watched again.
    ckpt = torch.load(io.BytesIO(files["ckpt"]), weights_only=True)
    resumed = Backbone()
    resumed.load_state_dict(ckpt["model"])
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    opt2.load_state_dict(ckpt["optimizer"])
    warmup2 = torch.optim.lr_scheduler.LinearLR(opt2, start_factor=0.1, total_iters=3)
    cosine2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=12)
    sched2 = torch.optim.lr_scheduler.SequentialLR(opt2, [warmup2, cosine2], milestones=[3])
    sched2.load_state_dict(ckpt["scheduler"])
    with attach(resumed, opt2):
        for it in range(6, 10):
            x, y = _batch(it)
            opt2.zero_grad()
            F.cross_entropy(resumed(x), y).backward()
            opt2.step()
            sched2.step()
    # The whole objects load back and step.
    whole_opt = torch.load(io.BytesIO(files["optimizer"]), weights_only=False)
    whole_sched = torch.load(io.BytesIO(files["scheduler"]), weights_only=False)
    whole_sched.step()
    return {
        "state": _state(model),
        "resumed": _state(resumed),
        "opt": _opt_state(opt),
        "opt2": _opt_state(opt2),
        "lrs": lrs,
        "files": files,
        "whole_opt": _opt_state(whole_opt),
        "whole_sched_lr": whole_sched.get_last_lr(),
        "rng": torch.get_rng_state(),
    }


# -- timm ModelEmaV2, copies of the model and optimizer mid-run that train on their own -------
class ModelEmaV2(nn.Module):
    """timm.utils.ModelEmaV2, as written there."""

    def __init__(self, model: nn.Module, decay: float = 0.9) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.decay = decay

    def _update(self, model: nn.Module, update_fn: Callable[..., torch.Tensor]) -> None:
        with torch.no_grad():
            for ema_v, model_v in zip(
                self.module.state_dict().values(), model.state_dict().values()
            ):
                ema_v.copy_(update_fn(ema_v, model_v))

    def update(self, model: nn.Module) -> None:
        self._update(model, update_fn=lambda e, m: self.decay * e + (1.0 - self.decay) * m)


def timm_ema_and_copies(attach: Attach) -> Any:
    model = Backbone()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ema = None
    got: dict[str, Any] = {}
    with attach(model, opt):
        for step in range(10):
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if step == 1:
                ema = ModelEmaV2(model)
            if ema is not None:
                ema.update(model)
            if step == 4:
                # A copy made mid-run (copy.deepcopy, pickle, copy.copy of the optimizer) trains
                # on its own optimizer: the live model and optimizer are untouched by it.
                twin = copy.deepcopy(model)
                thawed = pickle.loads(pickle.dumps(model))
                shallow = copy.copy(opt)
                deep_opt = copy.deepcopy(opt)
                got["copy_hooks"] = [
                    sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in c.modules())
                    for c in (twin, thawed)
                ]
                got["opt_hooks"] = [
                    len(o._optimizer_step_pre_hooks) + len(o._optimizer_step_post_hooks)
                    for o in (deep_opt,)
                ]
                got["shallow_is_same_groups"] = shallow.param_groups is opt.param_groups
                for c in (twin, thawed):
                    side = torch.optim.SGD(c.parameters(), lr=0.1)
                    for _ in range(3):
                        side.zero_grad()
                        F.cross_entropy(c(x), y).backward()
                        side.step()
                got["twin"] = _state(twin)
                got["thawed"] = _state(thawed)
                got["deep_opt"] = _opt_state(deep_opt)
    assert ema is not None
    with torch.no_grad():
        got["ema_out"] = ema.module(_batch(0)[0])
    return {"state": _state(model), "ema": _state(ema.module), "got": got}


# -- the user's hooks in both orders, and code that empties the hook dicts --------------------
def hooks_cleared(attach: Attach) -> Any:
    model = Backbone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen: list[str] = []
    # Before attach: a kwargs pre-hook and a full backward hook.
    model.stem.register_forward_pre_hook(lambda m, a, kw: ((a[0] * 1.5,), kw), with_kwargs=True)
    model.head.register_full_backward_hook(lambda m, gi, go: seen.append("bw") or None)
    outs = []
    with attach(model, opt):
        # After attach: the same kinds, one prepended.
        model.head.register_forward_pre_hook(
            lambda m, a, kw: ((a[0] + 0.01,), kw), with_kwargs=True, prepend=True
        )
        model.stem.register_forward_hook(lambda m, i, o: o * 0.5)
        model.register_full_backward_pre_hook(lambda m, go: (go[0] * 2,))
        for step in range(10):
            if step == 3:  # a feature extractor's cleanup: every forward hook, dict emptied
                for m in model.modules():
                    m._forward_hooks.clear()
            if step == 6:  # or replaced by a new dict
                for m in model.modules():
                    m._forward_pre_hooks = OrderedDict()
                    m._backward_hooks = OrderedDict()
                    m._backward_pre_hooks = OrderedDict()
            x, y = _batch(step)
            opt.zero_grad()
            out = model(x)
            outs.append(out.detach())
            F.cross_entropy(out, y).backward()
            opt.step()
    return {"state": _state(model), "outs": outs, "seen": seen}


# -- a research script: re-init a head mid-run (RNG), dtype round trips ------------------------
def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


def reinit_and_dtypes(attach: Attach) -> Any:
    model = Backbone()
    model.apply(_init_weights)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    got: dict[str, Any] = {}
    with attach(model, opt):
        for step in range(12):
            if step == 3:
                model.head.apply(_init_weights)  # "re-initialise the classifier"
            if step == 5:
                model.apply(_init_weights)
            if step == 7:  # a half-precision export check, then back to float
                with torch.no_grad():
                    got["half_out"] = model.half()(_batch(0)[0].half())
                model.float()
            if step == 9:
                got["double_out"] = model.to(torch.float64)(_batch(0)[0].double()).detach()
                model.to(dtype=torch.float32)
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return {
        "state": _state(model),
        "opt": _opt_state(opt),
        "got": got,
        "rng": torch.get_rng_state(),
    }


# -- HF-style fine-tune: decay groups, backbone unfrozen later, head swapped -------------------
def finetune_param_groups(attach: Attach) -> Any:
    model = Backbone()
    model.stem.requires_grad_(False)
    no_decay = ("bias", "LayerNorm.weight", "stem.1.weight")
    head = [
        {"params": [p for n, p in model.head.named_parameters() if n not in no_decay]},
        {"params": [model.head.bias], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(head, lr=5e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.ChainedScheduler(
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=4),
            torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95),
        ]
    )
    lrs = []
    with attach(model, opt):
        for step in range(14):
            if step == 4:  # unfreeze the backbone at a lower lr
                model.stem.requires_grad_(True)
                opt.add_param_group({"params": list(model.stem.parameters()), "lr": 1e-3})
            if step == 9:  # a new head, swapped into the first group in place
                for p in model.head.parameters():
                    opt.state.pop(p, None)  # else opt.state_dict() raises a KeyError, plainly
                model.head = nn.Linear(16, 3)
                opt.param_groups[0]["params"] = [model.head.weight]
                opt.param_groups[1]["params"] = [model.head.bias]
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if step < 4:  # the chained schedulers know the first groups only
                sched.step()
            lrs.append([g["lr"] for g in opt.param_groups])
    return {"state": _state(model), "opt": _opt_state(opt), "lrs": lrs}


# -- roll back to the last good state on a bad step, then go on --------------------------------
def rollback_on_spike(attach: Attach) -> Any:
    model = Backbone()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    good_model, good_opt = None, None
    losses = []
    with attach(model, opt):
        for step in range(12):
            x, y = _batch(step)
            if step == 6:
                y = y * 0 + 7  # a corrupt batch: labels out of range, the loss raises
            opt.zero_grad()
            try:
                loss = F.cross_entropy(model(x), y)
            except (IndexError, RuntimeError) as exc:
                losses.append(type(exc).__name__)
                model.load_state_dict(good_model)
                opt.load_state_dict(good_opt)
                continue
            loss.backward()
            opt.step()
            plateau.step(loss.item())
            losses.append(loss.item())
            if step % 3 == 0:
                good_model = copy.deepcopy(model.state_dict())
                good_opt = copy.deepcopy(opt.state_dict())
    return {"state": _state(model), "opt": _opt_state(opt), "losses": losses}


# -- the RNG streams: dropout over 20 steps, Python's and numpy's generators -------------------
def rng_streams(attach: Attach) -> Any:
    random.seed(0)
    np.random.seed(0)
    model = nn.Sequential(
        nn.Linear(6, 32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(32, 32),
        nn.Dropout(0.3),
        nn.Linear(32, 3),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    states, draws = [], []
    with attach(model, opt):
        for step in range(20):
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            states.append(torch.get_rng_state())
            draws.append((random.random(), float(np.random.rand())))
    return {"state": _state(model), "rng": states, "draws": draws}


# -- exceptions raised in the user's loop: same type, message and innermost frame -------------
class Flaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("shape mismatch in Flaky.forward")
        return self.fc(x)


def exceptions_propagate(attach: Attach) -> Any:
    got: dict[str, Any] = {}
    for case in ("loop", "forward", "tensor_hook", "module_hook", "backward_twice", "keyboard"):
        model = Flaky()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def train(model: Flaky = model, opt: torch.optim.Optimizer = opt, case: str = case) -> None:
            with attach(model, opt):
                for step in range(5):
                    x, y = _batch(step)
                    if step == 3:
                        if case == "loop":
                            raise ValueError(f"bad batch at step {step}")
                        if case == "keyboard":
                            raise KeyboardInterrupt
                        if case == "forward":
                            model.fail = True
                        if case == "tensor_hook":
                            model.fc.weight.register_hook(
                                lambda g: g / 0 if g.sum() > 1e9 else {}[1]
                            )
                        if case == "module_hook":
                            model.fc.register_forward_hook(lambda m, i, o: o.view(-1, 7))
                        if case == "backward_twice":
                            loss = F.cross_entropy(model(x), y)
                            loss.backward()
                            loss.backward()
                    opt.zero_grad()
                    F.cross_entropy(model(x), y).backward()
                    opt.step()

        got[case] = _raised(train)
        got[case + "_state"] = _state(model)
    return got


# -- the whole loop under warnings.simplefilter("error"): nothing of ours warns ---------------
def warnings_are_errors(attach: Attach) -> Any:
    model = nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    val = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with attach(model, opt):
            for step in range(12):
                x, y = _batch(step)
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
                    loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
                sched.step()
                if step % 4 == 3:
                    model.eval()
                    with torch.no_grad():
                        val.append(F.cross_entropy(model(x), y))
                    model.train()
    return {"state": _state(model), "val": val, "lr": sched.get_last_lr()}


# -- torch.optim.swa_utils: an AveragedModel and update_bn; a step wrapped by the user --------
def swa_and_wrapped_step(attach: Attach) -> Any:
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    swa_model = torch.optim.swa_utils.AveragedModel(model)
    swa_sched = torch.optim.swa_utils.SWALR(opt, swa_lr=0.01, anneal_epochs=2)
    calls = []
    plain_step = opt.step

    def logged_step(*args: Any, **kwargs: Any) -> Any:  # a Lookahead-style wrapper
        calls.append(len(calls))
        return plain_step(*args, **kwargs)

    with attach(model, opt):
        for step in range(10):
            if step == 2:
                opt.step = logged_step
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if step >= 5:
                swa_model.update_parameters(model)
                swa_sched.step()
        loader = [_batch(i) for i in range(4)]
        torch.optim.swa_utils.update_bn(loader, swa_model)
    return {
        "state": _state(model),
        "swa": _state(swa_model),
        "calls": calls,
        "lr": swa_sched.get_last_lr(),
    }


PROGRAMS: list[Callable[[Attach], Any]] = [
    detectron_checkpointer,
    timm_ema_and_copies,
    hooks_cleared,
    reinit_and_dtypes,
    finetune_param_groups,
    rollback_on_spike,
    rng_streams,
    exceptions_propagate,
    warnings_are_errors,
    swa_and_wrapped_step,
]


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
def test_operation_gives_the_same_result_attached(program, tmp_path):
    check(program, tmp_path)


def test_exceptions_keep_their_innermost_frame_in_the_users_code(tmp_path):
    got = check(exceptions_propagate, tmp_path)
    for case in ("loop", "forward", "tensor_hook", "module_hook", "keyboard"):
        assert got[case][2] == __file__, (case, got[case])
    assert got["keyboard"][0] == "KeyboardInterrupt"


def test_a_copy_trains_without_our_hooks_and_is_not_counted(tmp_path):
    """A deepcopy/pickle copy of the watched model trains with its own optimizer: the doctor
    numbers the watched optimizer's steps only and records each of the model's own forwards."""
    torch.manual_seed(0)
    model = Backbone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with td.watch(model, opt, console=False, out_dir=tmp_path, budget=1.0) as doc:
        for step in range(6):
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if step == 2:
                for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
                    side = torch.optim.SGD(twin.parameters(), lr=0.1)
                    for _ in range(4):
                        side.zero_grad()
                        F.cross_entropy(twin(x), y).backward()
                        side.step()
        steps = doc.step
    assert steps == 7  # the next step to open: 6 of the watched optimizer's, none of the copies'
    assert not doc.guard.errors
    assert "TD105" not in [f.code for f in doc.report.findings]

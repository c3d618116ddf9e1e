"""More of a user's operations on a watched run work exactly as without traindoctor: pruning and
parametrizations registered mid-run, QAT prepare, activation checkpointing both ways, the default
dtype changed, deterministic algorithms, a tracer (coverage, a debugger) active while we attach,
the user's own TorchDispatchMode / TorchFunctionMode and `__torch_function__` tensors, inference
phases (set_grad_enabled(False), inference_mode), channels_last mid-run, a generator-based loop.

Each program runs plainly, under `td.watch` and inside `traindoctor run`'s discovery hooks
(tests/test_user_patterns.py's `check`): what it computed must be equal bit for bit, with no
internal error recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from ..test_user_patterns import Attach, _opt_state, _state, check

torch.set_num_threads(1)

STEPS = 6


def _mlp(i: int = 6, h: int = 12, o: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, o))


def _batch(step: int, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(200 + step % 3)
    return torch.randn(16, 6, generator=g, dtype=dtype), torch.randint(0, 3, (16,), generator=g)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = STEPS) -> list[Any]:
    losses = []
    for step in range(steps):
        x, y = _batch(step)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


# -- pruning and parametrizations registered mid-run ------------------------------------------
def prune_midrun(attach: Attach) -> Any:
    from torch.nn.utils import prune

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    got: dict[str, Any] = {}
    with attach(model, opt):
        got["before"] = _train(model, opt, 3)
        prune.l1_unstructured(model[0], "weight", amount=0.5)
        prune.random_unstructured(model[2], "weight", amount=0.3)
        got["mask_keys"] = sorted(model.state_dict())
        got["pruned"] = _train(model, opt, 3)
        prune.remove(model[0], "weight")
        got["removed"] = _train(model, opt, 2)
    got["state"] = _state(model)
    return got


def parametrizations_midrun(attach: Attach) -> Any:
    from torch.nn.utils import parametrizations as P

    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    got: dict[str, Any] = {}
    with attach(model, opt):
        got["before"] = _train(model, opt, 2)
        P.weight_norm(model[0])
        P.spectral_norm(model[2])
        P.orthogonal(model[4])
        # The new parameters (weight_norm's original0/1) go to the optimizer; spectral_norm and
        # orthogonal keep the old weight as their `original`.
        held = {id(p) for group in opt.param_groups for p in group["params"]}
        opt.add_param_group({"params": [p for p in model.parameters() if id(p) not in held]})
        got["names"] = [n for n, _ in model.named_parameters()]
        got["after"] = _train(model, opt, 4)
    got["state"] = _state(model)
    got["opt"] = _opt_state(opt)
    return got


def qat_prepare(attach: Attach) -> Any:
    from torch.ao.quantization import get_default_qat_qconfig, prepare_qat

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.body = _mlp()
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dequant(self.body(self.quant(x)))

    model = Net().train()
    model.qconfig = get_default_qat_qconfig("fbgemm")
    prepare_qat(model, inplace=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with attach(model, opt):
        losses = _train(model, opt)
    return {"state": _state(model), "losses": losses}


# -- activation checkpointing, both implementations -------------------------------------------
class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.a = nn.Sequential(nn.Linear(6, 12), nn.Dropout(0.1), nn.GELU())
        self.b = nn.Sequential(nn.Linear(12, 12), nn.Tanh())
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(self.a, x.requires_grad_(), use_reentrant=self.reentrant)
        h = checkpoint(self.b, h, use_reentrant=self.reentrant)
        return self.head(h)


def checkpoint_both_ways(attach: Attach) -> Any:
    got: dict[str, Any] = {}
    for reentrant in (True, False):
        model = Checkpointed(reentrant)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with attach(model, opt):
            got[f"losses_{reentrant}"] = _train(model, opt)
        got[f"state_{reentrant}"] = _state(model)
    return got


# -- global settings the user changes ---------------------------------------------------------
def default_dtype_float64(attach: Attach) -> Any:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        got: dict[str, Any] = {"losses": []}
        with attach(model, opt):
            for step in range(STEPS):
                x, y = _batch(step, torch.float64)
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                got["losses"].append(loss.detach())
                got.setdefault("dtypes", []).append(str(torch.get_default_dtype()))
        got["state"] = _state(model)
        got["opt"] = _opt_state(opt)
    finally:
        torch.set_default_dtype(old)
    return got


def deterministic_algorithms(attach: Attach) -> Any:
    old, old_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        model = nn.Sequential(
            nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(3)
        x, y = torch.randn(8, 2, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
        losses = []
        with attach(model, opt):
            for _ in range(STEPS):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
        flags = (torch.are_deterministic_algorithms_enabled(),)
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)
    return {"state": _state(model), "losses": losses, "flags": flags}


# -- a tracer active while we attach (coverage, pdb) ------------------------------------------
def tracer_active(attach: Attach) -> Any:
    """A pdb/coverage-style trace function is installed before attach and stays the one in place;
    the lines it sees in the user's own code are the same."""
    seen: list[tuple[str, int]] = []
    here = __file__

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == here:
            seen.append((event, frame.f_lineno - frame.f_code.co_firstlineno))
            return tracer
        return None

    old = sys.gettrace()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sys.settrace(tracer)
    try:
        with attach(model, opt):
            losses = _train(model, opt, 4)
        still = sys.gettrace() is tracer
    finally:
        sys.settrace(old)
    return {"state": _state(model), "losses": losses, "still": still, "seen": seen}


# -- the user's own modes and tensor subclasses ------------------------------------------------
class OpLog(TorchDispatchMode):
    """A debugging mode that logs every aten op the step runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class FnLog(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def user_modes(attach: Attach) -> Any:
    """The user's dispatch/function modes and torch's FlopCounterMode around the steps see the
    user's own ops: the op logs and the flop count are what they are without traindoctor."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    got: dict[str, Any] = {}
    with attach(model, opt):
        _train(model, opt, 2)
        x, y = _batch(0)
        flops = FlopCounterMode(display=False)
        with flops:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        got["flops"] = flops.get_total_flops()
        log = OpLog()
        with log:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        got["ops"] = log.ops
        fn = FnLog()
        with fn:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        got["calls"] = fn.calls
        got["losses"] = _train(model, opt, 2)
    got["state"] = _state(model)
    return got


class Logged(torch.Tensor):
    """A `__torch_function__` subclass (as in torch's docs) that counts the calls made on it."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001
        cls.calls.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def subclass_inputs(attach: Attach) -> Any:
    Logged.calls = []
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    with attach(model, opt):
        for step in range(STEPS):
            x, y = _batch(step)
            opt.zero_grad()
            out = model(x.as_subclass(Logged))
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            losses.append((type(out).__name__, loss.detach().as_subclass(torch.Tensor)))
    return {"state": _state(model), "losses": losses, "calls": list(Logged.calls)}


# -- inference phases, memory format, a generator loop ----------------------------------------
def inference_phases(attach: Attach) -> Any:
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    got: dict[str, Any] = {"evals": []}
    with attach(model, opt):
        for step in range(STEPS):
            x, y = _batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if step % 2 == 1:
                torch.set_grad_enabled(False)
                got["evals"].append(model(x))  # train-mode BN: running stats move
                torch.set_grad_enabled(True)
                model.eval()
                with torch.inference_mode():
                    out = model(x)
                got["evals"].append((out.clone(), out.is_inference()))
                model.train()
    got["state"] = _state(model)
    return got


def channels_last_midrun(attach: Attach) -> Any:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)
    losses, formats = [], []
    with attach(model, opt):
        for step in range(STEPS):
            if step == 3:
                model.to(memory_format=torch.channels_last)
                x = x.to(memory_format=torch.channels_last)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            formats.append(model[0].weight.is_contiguous(memory_format=torch.channels_last))
    return {"state": _state(model), "losses": losses, "formats": formats}


def generator_loop(attach: Attach) -> Any:
    def steps(model: nn.Module, opt: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
        for step in range(STEPS):
            x, y = _batch(step)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            yield loss.detach()

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with attach(model, opt):
        it = steps(model, opt)
        first = [next(it) for _ in range(3)]
    rest = list(it)  # the generator finishes after the watch closed
    return {"state": _state(model), "losses": first + rest}


# -- the default device set, a shallow copy of the model, the optimizer pickled ---------------
def default_device_set(attach: Attach) -> Any:
    """`torch.set_default_device` puts a TorchFunctionMode under everything (ours included)."""
    torch.set_default_device("cpu")
    try:
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        with attach(model, opt):
            losses = _train(model, opt)
            made = torch.zeros(2).device.type
    finally:
        torch.set_default_device(None)
    return {"state": _state(model), "losses": losses, "made": made, "opt": _opt_state(opt)}


def shallow_copy_and_pickled_optimizer(attach: Attach) -> Any:
    """copy.copy(model) shares the hook dicts and parameters: training through it is training
    the model. The optimizer's state_dict pickles, and the whole optimizer saves and loads."""
    import copy
    import io
    import pickle

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    got: dict[str, Any] = {}
    with attach(model, opt):
        got["before"] = _train(model, opt, 3)
        shallow = copy.copy(model)
        got["through_copy"] = _train(shallow, opt, 3)
        got["opt_sd"] = pickle.loads(pickle.dumps(opt.state_dict()))
        buf = io.BytesIO()
        torch.save(opt, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        got["loaded_hooks"] = len(loaded._optimizer_step_pre_hooks) + len(
            loaded._optimizer_step_post_hooks
        )
        got["loaded_state"] = _opt_state(loaded)
        got["after"] = _train(model, opt, 2)
    got["state"] = _state(model)
    return got


PROGRAMS: list[Callable[[Attach], Any]] = [
    prune_midrun,
    parametrizations_midrun,
    qat_prepare,
    checkpoint_both_ways,
    default_dtype_float64,
    deterministic_algorithms,
    tracer_active,
    user_modes,
    subclass_inputs,
    inference_phases,
    channels_last_midrun,
    generator_loop,
    default_device_set,
    shallow_copy_and_pickled_optimizer,
]


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
def test_operation_gives_the_same_result_attached(program, tmp_path):
    check(program, tmp_path)


# -- our replays still work inside the user's modes: the NaN autopsy names the op -------------
class LogHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.body(x))  # NaN where the output is negative


def _nan_run(watch: Any) -> Any:
    Logged.calls = []
    torch.manual_seed(0)
    model = LogHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    log = OpLog()
    doc = watch(model, opt)
    with log:
        for step in range(4):
            x, _ = _batch(step)
            opt.zero_grad()
            model(x.as_subclass(Logged)).mean().backward()
            opt.step()
    return model, log.ops, list(Logged.calls), doc


def test_autopsy_names_the_op_under_the_users_mode_and_subclass(tmp_path):
    """The forward the autopsy replays runs the user's code as in their run (their subclass, our
    tracer seeing the ops); neither the user's op log nor the subclass's calls hold ours."""
    import traindoctor as td

    plain, plain_ops, plain_calls, _ = _nan_run(lambda m, o: None)
    model, ops, calls, doc = _nan_run(
        lambda m, o: td.watch(m, o, console=False, out_dir=tmp_path, budget=1.0)
    )
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    for a, b in zip(plain.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    assert ops == plain_ops
    # The subclass sees the user's own calls, and the autopsy's replay of the NaN step's forward
    # (their code run again as in their run, on a copy); none of our reads.
    import collections

    assert not collections.Counter(plain_calls) - collections.Counter(calls)
    extra = collections.Counter(calls) - collections.Counter(plain_calls)
    forward = {"linear": 3, "relu": 1, "tanh": 1, "log": 1}
    assert extra == collections.Counter({k: n * extra["log"] for k, n in forward.items()}), extra
    events = report.timeline.events("nonfinite")
    assert events and events[0]["op"] == "log", events


# -- torch.multiprocessing.spawn of a function that trains a module defined at top level ------
SPAWN_SCRIPT = """
import sys

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x):
        return self.body(x)


def train(rank, out):
    torch.set_num_threads(1)
    torch.manual_seed(rank)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    for _ in range(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    torch.save(model.state_dict(), f"{out}.{rank}")


if __name__ == "__main__":
    train(9, sys.argv[1])  # the main process trains too: the run traindoctor watches
    mp.spawn(train, args=(sys.argv[1],), nprocs=1)
    print("done")
"""


@pytest.mark.slow
def test_mp_spawn_trains_the_same_under_traindoctor_run(tmp_path):
    from ..cli.conftest import python, run_all, write
    from ..cli.conftest import td as traindoctor

    write(tmp_path, "spawn_train.py", SPAWN_SCRIPT)
    res = run_all(
        {
            # Three fresh interpreters each: minutes on a loaded machine.
            "plain": lambda: python(tmp_path, "spawn_train.py", "plain", timeout=600),
            "td": lambda: traindoctor(tmp_path, "run", "spawn_train.py", "td", timeout=600),
        }
    )
    for how in ("plain", "td"):
        assert res[how].rc == 0 and "done" in res[how].stdout, res[how]
    for rank in (0, 9):
        a = torch.load(tmp_path / f"plain.{rank}")
        b = torch.load(tmp_path / f"td.{rank}")
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), rank
    assert "Traceback" not in res["td"].stderr, res["td"].stderr
    assert res["td"].findings()["internal_errors"] == []
    assert len(list((tmp_path / "traindoctor-runs").iterdir())) == 1  # the main process's

"""The user's operations of test_user_operations_inprocess.py, and those that need a process of
their own, run as scripts: plainly (`python train.py`), under `td.watch` and under `traindoctor
run` (zero-code), with the same results bit for bit:

- DataLoaders with 2 workers, persistent, fork and spawn, a worker_init_fn seeding numpy's
  generator the dataset augments with; Hogwild (`model.share_memory()`, trained by processes
  started with fork and spawn); `torch.compile` of the model after watched steps; a training
  checkpoint dict holding the model, optimizer and scheduler objects and their state dicts,
  loaded by a process where traindoctor cannot be imported;
- the in-process programs, all in one script under `traindoctor run`;
- how the script ends: `sys.exit(3)` exits 3, a KeyboardInterrupt or an exception raised in the
  loop exits as plainly with the same traceback tail (its innermost frames and message);
- `PYTHONWARNINGS=error`: nothing traindoctor does warns (the script runs to its end).
"""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from ..cli.conftest import TIMEOUT, TRAINDOCTOR, Result, env, python, run_all, write
from ..cli.conftest import td as traindoctor
from ..test_user_patterns import _same
from .test_user_operations_inprocess import PROGRAMS

pytestmark = pytest.mark.slow

OPS = """
# A research script: loaders with workers, Hogwild, compile mid-run, a full checkpoint.
import os
import sys

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

MODE = sys.argv[1] if len(sys.argv) > 1 else "plain"  # plain | watch (td.watch per loop)


def watched(model, opt):
    if MODE != "watch":
        import contextlib

        return contextlib.nullcontext()
    import traindoctor as td

    return td.watch(model, opt, console=False, out_dir="watch-runs")


class Jittered(Dataset):
    # Augments with numpy's global generator, as many datasets do (seeded per worker).

    def __init__(self, n=64):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = torch.from_numpy(np.random.normal(0, 0.1, 6).astype("float32"))
        return self.x[i] + noise, self.y[i]


def seed_worker(worker_id):
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def net():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def loaders(ctx):
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(7)
    loader = DataLoader(
        Jittered(), batch_size=16, shuffle=True, num_workers=2, persistent_workers=True,
        worker_init_fn=seed_worker, generator=g, multiprocessing_context=ctx,
    )
    seen = []
    with watched(model, opt):
        for epoch in range(2):
            for x, y in loader:
                seen.append(x.sum().item())
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
    return {"params": [p.detach().clone() for p in model.parameters()], "seen": seen}


def hogwild_worker(model, rank):
    torch.manual_seed(10 + rank)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def hogwild(ctx, ranks):
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with watched(model, opt):
        for _ in range(3):  # the main process trains first, watched
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
            opt.step()
        model.share_memory()
        for rank in range(ranks):  # one after the other: the result is deterministic
            p = mp.get_context(ctx).Process(target=hogwild_worker, args=(model, rank))
            p.start()
            p.join()
            assert p.exitcode == 0, p.exitcode
    return {"params": [p.detach().clone() for p in model.parameters()]}


def compile_midrun():
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    outs = []
    with watched(model, opt):
        run = model
        for step in range(8):
            if step == 3:
                run = torch.compile(model, backend="aot_eager")
            opt.zero_grad()
            out = run(x)
            outs.append(out.detach())
            F.cross_entropy(out, y).backward()
            opt.step()
    return {"params": [p.detach().clone() for p in model.parameters()], "outs": outs}


def checkpoint(path):
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with watched(model, opt):
        for step in range(6):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
            if step == 4:
                torch.save(
                    {"epoch": 1, "model": model, "optimizer": opt, "scheduler": sched,
                     "state_dict": model.state_dict(), "opt_state": opt.state_dict(),
                     "sched_state": sched.state_dict(), "scaler": scaler.state_dict(),
                     "rng": torch.get_rng_state()},
                    path,
                )
                torch.save(model.state_dict(), path + ".weights")
    return {"params": [p.detach().clone() for p in model.parameters()]}


if __name__ == "__main__":
    out = sys.argv[2]
    results = {
        "fork": loaders("fork"),
        "spawn": loaders("spawn"),
        "hogwild_fork": hogwild("fork", ranks=2),
        "hogwild_spawn": hogwild("spawn", ranks=1),
        "compile": compile_midrun(),
        "checkpoint": checkpoint(out + ".ckpt"),
    }
    results["rng"] = torch.get_rng_state()
    torch.save(results, out)
"""

PROGRAMS_SCRIPT = """
import importlib
import sys

import torch

sys.path.insert(0, {root!r})
ops = importlib.import_module("tests.realworld.test_user_operations_inprocess")
patterns = importlib.import_module("tests.test_user_patterns")
results = {{}}
for program in ops.PROGRAMS:
    torch.manual_seed(0)
    results[program.__name__] = patterns._caught(lambda: program(patterns._nothing))
torch.save(results, sys.argv[1])
"""

ENDS = """
import sys

import torch
import torch.nn.functional as F

torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 4), torch.randn(8, 2)


def check(step):
    if step == 3:
        if sys.argv[1] == "exit":
            sys.exit(3)
        if sys.argv[1] == "interrupt":
            raise KeyboardInterrupt
        raise ValueError(f"bad batch at step {step}")


for step in range(6):
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()
    check(step)
"""

WARNS = """
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1),
                      nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 30)
x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
for step in range(25):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    if step % 10 == 9:
        model.eval()
        with torch.no_grad():
            F.cross_entropy(model(x), y)
        model.train()
torch.save([p.detach() for p in model.parameters()], "params.pt")
"""

LOAD = """
import sys

sys.modules["traindoctor"] = None  # not importable in this process
import torch

reference = None
for path in sys.argv[1:]:
    ckpt = torch.load(path, weights_only=False)
    weights = torch.load(path + ".weights", weights_only=True)
    model = ckpt["model"].eval()
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in model.modules()), path
    opt = ckpt["optimizer"]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks, path
    opt.step()
    ckpt["scheduler"].step()
    values = [model(torch.ones(2, 6)).detach(), *weights.values(), *ckpt["state_dict"].values(),
              ckpt["rng"], torch.tensor(ckpt["scheduler"].get_last_lr())]
    if reference is None:
        reference = values
    assert all(torch.equal(a, b) for a, b in zip(reference, values, strict=True)), path
print("loaded", len(sys.argv) - 1)
"""


def _warnings_as_errors(folder):
    def go():
        e = env()
        e["PYTHONWARNINGS"] = "error"
        args = ["run", "--no-progress", "warns.py"]
        p = subprocess.run(
            [*TRAINDOCTOR, *args],
            cwd=folder,
            env=e,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        return Result(folder, args, p.returncode, p.stdout, p.stderr)

    return go


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    f = tmp_path_factory.mktemp("user_operations")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    write(f, "ops.py", OPS)
    write(f, "programs.py", PROGRAMS_SCRIPT.format(root=root))
    write(f, "ends.py", ENDS)
    for how in ("plain", "run"):
        write(f / f"warns_{how}", "warns.py", WARNS)
    return f, run_all(
        {
            "ops_plain": lambda: python(f, "ops.py", "plain", "plain.pt", timeout=600),
            "ops_watch": lambda: python(f, "ops.py", "watch", "watch.pt", timeout=600),
            "ops_run": lambda: traindoctor(
                f,
                "run",
                "--no-progress",
                "--out",
                "run-ops",
                "ops.py",
                "plain",
                "run.pt",
                timeout=600,
            ),
            "programs_plain": lambda: python(f, "programs.py", "programs_plain.pt"),
            "programs_run": lambda: traindoctor(
                f, "run", "--no-progress", "--out", "run-programs", "programs.py", "programs_run.pt"
            ),
            **{
                f"{case}_{how}": (
                    (lambda case=case: python(f, "ends.py", case))
                    if how == "plain"
                    else (
                        lambda case=case: traindoctor(
                            f, "run", "--no-progress", "--out", f"run-{case}", "ends.py", case
                        )
                    )
                )
                for case in ("exit", "interrupt", "raise")
                for how in ("plain", "run")
            },
            "warns_plain": lambda: python(f / "warns_plain", "-W", "error", "warns.py"),
            "warns_run": _warnings_as_errors(f / "warns_run"),
        }
    )


def _internal_errors(folder) -> list:
    import json

    return [
        e
        for path in sorted(folder.glob("*/findings.json"))
        for e in json.loads(path.read_text())["internal_errors"]
    ]


def test_loaders_hogwild_compile_and_checkpoints_are_as_plain(results):
    f, res = results
    for how in ("plain", "watch", "run"):
        assert res[f"ops_{how}"].rc == 0, res[f"ops_{how}"]
    plain = torch.load(f / "plain.pt", weights_only=False)
    assert list(plain) == [
        "fork",
        "spawn",
        "hogwild_fork",
        "hogwild_spawn",
        "compile",
        "checkpoint",
        "rng",
    ]
    for how in ("watch", "run"):
        _same(plain, torch.load(f / f"{how}.pt", weights_only=False), how)
    assert _internal_errors(f / "watch-runs") == []
    assert _internal_errors(f / "run-ops") == []
    assert res["ops_run"].findings("run-ops")["steps"] >= 8


def test_a_checkpoint_saved_while_watched_loads_where_traindoctor_cannot_be_imported(results):
    f, _ = results
    write(f, "load.py", LOAD)
    r = python(f, "load.py", "plain.pt.ckpt", "watch.pt.ckpt", "run.pt.ckpt")
    assert r.rc == 0, r
    assert "loaded 3" in r.stdout


def test_every_inprocess_program_gives_the_same_result_under_traindoctor_run(results):
    f, res = results
    assert res["programs_plain"].rc == 0, res["programs_plain"]
    assert res["programs_run"].rc == 0, res["programs_run"]
    plain = torch.load(f / "programs_plain.pt", weights_only=False)
    assert list(plain) == [p.__name__ for p in PROGRAMS]
    for name, result in plain.items():
        assert isinstance(result, dict), (name, result)
    _same(plain, torch.load(f / "programs_run.pt", weights_only=False), "run")
    assert res["programs_run"].findings("run-programs")["internal_errors"] == []


def _traceback_tail(stderr: str) -> list[str]:
    """The traceback's innermost frame and the exception line, as python printed them."""
    lines = stderr[stderr.rindex("Traceback (most recent call last)") :].splitlines()
    end = next(i for i, line in enumerate(lines) if i and not line.startswith(" "))
    return [line for line in lines[: end + 1] if line.strip() and set(line.strip()) != {"^"}][-3:]


@pytest.mark.parametrize(("case", "code"), [("exit", 3), ("interrupt", 130), ("raise", 1)])
def test_the_script_ends_as_it_does_plainly(results, case, code):
    _, res = results
    plain, run = res[f"{case}_plain"], res[f"{case}_run"]
    # A KeyboardInterrupt ends python by SIGINT (-2 here, 130 in a shell; 1 where SIGINT is
    # ignored, as under some CI runners); `traindoctor run` exits 130, as documented.
    assert plain.rc in ((code,) if case != "interrupt" else (1, -2, 130)), plain
    assert run.rc == code, run
    if case == "exit":
        assert "Traceback" not in run.stderr, run
        return
    assert _traceback_tail(run.stderr) == _traceback_tail(plain.stderr), run


def test_nothing_of_ours_warns_under_an_error_filter(results):
    f, res = results
    assert res["warns_plain"].rc == 0, res["warns_plain"]
    assert res["warns_run"].rc == 0, res["warns_run"]
    plain = torch.load(f / "warns_plain" / "params.pt")
    run = torch.load(f / "warns_run" / "params.pt")
    assert all(torch.equal(a, b) for a, b in zip(plain, run, strict=True))
    assert _internal_errors(f / "warns_run" / "traindoctor-runs") == []

"""`traindoctor run script.py` against `python script.py`, end to end: CPU time of each process
(user + sys, children included, from `resource.getrusage(RUSAGE_CHILDREN)`), plain and watched
alternated, and with `--phases` where the watched process's extra CPU goes (imports, the
script's loop with the hooks, close(): rules, findings.json + report.md, plots, page, console).

The script is an ordinary plain loop (an MLP 64-256-256-1, Adam, batch 64, 200 steps) written to
a temporary folder. Byte code is cached in a temporary PYTHONPYCACHEPREFIX (and
PYTHONDONTWRITEBYTECODE dropped) for both sides: an installed package has its .pyc files, and
compiling traindoctor's sources on each start would add ~0.25 s that no user pays.

Usage: python bench/run_cost.py [--rounds 4] [--steps 200] [--phases]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = """\
import torch
import torch.nn as nn

torch.manual_seed(0)
X = torch.randn(2048, 64)
Y = X @ torch.randn(64, 1) + 0.1 * torch.randn(2048, 1)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                      nn.Linear(256, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.MSELoss()
for step in range({steps}):
    i = (step * 64) % 2048
    opt.zero_grad()
    loss = loss_fn(model(X[i:i + 64]), Y[i:i + 64])
    loss.backward()
    opt.step()
    if step % 50 == 0:
        print(step, loss.item())
"""

# Run inside the watched process with --phases: wraps the phases' functions with CPU timers.
PHASES = """\
import contextlib, functools, importlib, io, sys, time
t0 = time.process_time()
import torch, torch.optim  # the script imports them too
t_torch = time.process_time()
import traindoctor.cli, traindoctor.integrations.runner, traindoctor.doctor
import traindoctor.report, traindoctor.report.plots, traindoctor.report.html
import traindoctor.report.console
t_ours = time.process_time()
acc = {}
def wrap(module, path, label):
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    fn = getattr(owner, name)
    @functools.wraps(fn)
    def timed(*a, **k):
        t = time.process_time()
        try:
            return fn(*a, **k)
        finally:
            acc[label] = acc.get(label, 0.0) + time.process_time() - t
    setattr(owner, name, timed)
    return timed
wrap("traindoctor.integrations.runner", "_run_path", "script: loop, attach, steps")
wrap("traindoctor.doctor", "Doctor.close", "close()")
wrap("traindoctor.doctor", "Doctor.diagnose", "  rules")
wrap("traindoctor.report", "_write_text_reports", "  findings.json + report.md")
traindoctor.report.render_plots = wrap("traindoctor.report.plots", "render_plots", "  plots")
wrap("traindoctor.report.html", "render_html", "  report.html")
wrap("traindoctor.report.console", "print_report", "  console")
sys.argv = ["traindoctor", "run", "--out", sys.argv[1], sys.argv[2]]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        traindoctor.cli.main()
    except SystemExit:
        pass
print(f"torch import {t_torch - t0:.3f}")
print(f"traindoctor import {t_ours - t_torch:.3f}")
for k, v in acc.items():
    print(f"{k} {v:.3f}")
"""


# The plain process's same phases, for the script's row.
PLAIN_PHASES = """\
import contextlib, io, runpy, sys, time
t0 = time.process_time()
import torch, torch.optim
t_torch = time.process_time()
with contextlib.redirect_stdout(io.StringIO()):
    runpy.run_path(sys.argv[1], run_name="__main__")
print(f"plain: torch import {t_torch - t0:.3f}")
print(f"plain: script {time.process_time() - t_torch:.3f}")
"""


def cpu_of(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--phases", action="store_true", help="where the watched CPU goes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "train_mlp.py"
        script.write_text(SCRIPT.format(steps=args.steps))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPYCACHEPREFIX=str(Path(tmp) / "pyc"))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        runs = str(Path(tmp) / "runs")
        plain_cmd = [sys.executable, str(script)]
        watched_cmd = [sys.executable, "-m", "traindoctor", "run", "--out", runs, str(script)]
        for cmd in (plain_cmd, watched_cmd):  # byte code cached, files warm
            cpu_of(cmd, env, tmp)
        plain, watched = [], []
        for _ in range(args.rounds):
            plain.append(cpu_of(plain_cmd, env, tmp)[0])
            watched.append(cpu_of(watched_cmd, env, tmp)[0])
        p, w = statistics.median(plain), statistics.median(watched)
        print(f"load {os.getloadavg()[0]:.1f}; {args.rounds} rounds, CPU s per process (median)")
        print(f"python script.py           {p:.3f}  ({', '.join(f'{v:.2f}' for v in plain)})")
        print(f"traindoctor run script.py  {w:.3f}  ({', '.join(f'{v:.2f}' for v in watched)})")
        print(f"ratio {w / p:.3f}x, extra {w - p:.3f} s")
        if args.phases:
            phases, plain_phases = Path(tmp) / "phases.py", Path(tmp) / "plain_phases.py"
            phases.write_text(PHASES)
            plain_phases.write_text(PLAIN_PHASES)
            rows: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                out = cpu_of([sys.executable, str(plain_phases), str(script)], env, tmp)[1]
                out += cpu_of([sys.executable, str(phases), runs, str(script)], env, tmp)[1]
                for line in out.splitlines():
                    label, _, value = line.rpartition(" ")
                    rows.setdefault(label, []).append(float(value))
            print("in process, CPU s (median; rules and files are parts of close())")
            for label, values in rows.items():
                print(f"  {label:32s} {statistics.median(values):.3f}")


if __name__ == "__main__":
    main()

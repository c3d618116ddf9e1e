"""Running a distributed scenario: one rank (`main`, what torchrun starts in each process) and
the whole 2-process job (`run_job`, for the tests and by hand). Plain PyTorch in the ranks;
traindoctor only where the job is watched (`--watch OUT`: td.watch, as the README shows) or
launched under `traindoctor run` (zero-code)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

WORLD = 2


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def main(scenarios: tuple[Any, ...], argv: list[str] | None = None) -> Any:
    """One rank of a scenario's job: init the process group (gloo), train, close, tear down.
    Returns the trained model."""
    import torch
    import torch.distributed as dist

    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", default=scenarios[0].name)
    parser.add_argument("--watch", default=None, help="td.watch into this folder")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    scenario = next(s for s in scenarios if s.name == args.scenario)
    torch.set_num_threads(1)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    steps = args.steps or scenario.steps
    try:
        if args.watch:
            import traindoctor as td

            docs = []

            def watch_fn(model, optimizer, scaler=None):
                docs.append(td.watch(model, optimizer, scaler, out_dir=args.watch, console=False))
                docs[-1].budget.adaptive = False
                return docs[-1]

            model = scenario.train(steps=steps, watch=watch_fn)
            for doc in docs:
                doc.close()
        else:
            model = scenario.train(steps=steps)
        return model
    finally:
        dist.destroy_process_group()


def run_job(
    module: str, scenario: str, out_dir: Path, watch: bool = True, timeout: float = 240
) -> tuple[dict[str, Any] | None, str]:
    """Launch a scenario's 2-rank job under torchrun (watched with td.watch, or under
    `traindoctor run`), and return the job's merged findings.json (None if none was written)
    and the job's output."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out_dir = Path(out_dir)
    base = [str(torchrun), "--standalone", "--nproc_per_node", str(WORLD)]
    target = ["-m", module, "--scenario", scenario]
    if watch:
        cmd = [*base, *target, "--watch", str(out_dir)]
    else:
        cmd = [*base, "-m", "traindoctor", "run", "--out", str(out_dir), *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINDOCTOR_PLOTS": "0"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    found = sorted(out_dir.glob("*/findings.json"))
    data = json.loads(found[-1].read_text()) if found else None
    return data, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"

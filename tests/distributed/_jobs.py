"""What the multi-process integration tests share: a job launched in its own folder, several
launched side by side, the job's one merged report, and the parameters against a plain job."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.cli.conftest import env, write

Job = tuple[Path, int, str]  # (its folder, exit status, stdout + stderr)

# What libstdc++ prints when a rank aborts in gloo's teardown (destroy_process_group or exit).
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def ended_well(code: int, out: str, ranks: Iterable[int] = (0, 1)) -> bool:
    """Exit status 0, or every rank printed its `rank N done` line and one then aborted in
    gloo's teardown: plain FSDP2 jobs without traindoctor do that too (1 in 6 on this machine,
    2026-12-07), after the work these tests check is done."""
    if code == 0:
        return True
    return GLOO_TEARDOWN_ABORT in out and all(f"rank {r} done" in out for r in ranks)


def launch(
    root: Path,
    how: str,
    script: str,
    cmd: list[str],
    extra_env: dict[str, str] | None = None,
    timeout: int = 300,
    unset: Iterable[str] = (),
) -> Job:
    """`script` written to root/how/train.py and run as `cmd train.py how` there, with
    `extra_env` set and the `unset` variables left out of the environment."""
    folder = root / how
    write(folder, "train.py", script)
    e = {**env(), "TRAINDOCTOR_PLOTS": "0", **(extra_env or {})}
    for name in unset:
        e.pop(name, None)
    p = subprocess.run(
        [*cmd, "train.py", how], cwd=folder, env=e, capture_output=True, text=True, timeout=timeout
    )
    return folder, p.returncode, p.stdout + p.stderr


def side_by_side(
    root: Path, hows: Iterable[str], run: Callable[[Path, str], Job], workers: int = 3
) -> dict[str, Job]:
    """`run(root, how)` for each way at once (each job is mostly waiting on its ranks)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {how: pool.submit(run, root, how) for how in hows}
        return {how: f.result() for how, f in futures.items()}


def job_report(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The job's run directory and its merged findings.json: exactly one under folder/runs."""
    found = [p.parent for p in (folder / "runs").glob("*/findings.json")]
    assert len(found) == 1, sorted((folder / "runs").rglob("*"))
    return found[0], json.loads((found[0] / "findings.json").read_text())


def rank_report(job_dir: Path, rank: int) -> dict[str, Any]:
    return json.loads((job_dir / "ranks" / f"rank{rank}" / "findings.json").read_text())


def assert_params_as_plain(jobs: dict[str, Job], how: str) -> None:
    """Each rank's saved parameters (params_<how>_<rank>.pt) bit-identical to the plain job's."""
    import torch

    assert ended_well(jobs["plain"][1], jobs["plain"][2]), jobs["plain"][2][-4000:]
    for rank in (0, 1):
        watched = torch.load(jobs[how][0] / f"params_{how}_{rank}.pt")
        plain = torch.load(jobs["plain"][0] / f"params_plain_{rank}.pt")
        assert watched.keys() == plain.keys()
        assert all(torch.equal(watched[k], plain[k]) for k in plain), (how, rank)

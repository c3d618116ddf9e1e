"""One run id for every rank of a job, derived by each rank alone (no communication).

The key, in this order of preference:

1. `TRAINDOCTOR_RUN_ID`, when set (a launcher or the user names the job): used as it is.
2. Otherwise a hash of what every rank of one job sees alike and the next job does not:
   - `TORCHELASTIC_RUN_ID` (torchrun's rendezvous id: a fresh uuid under `--standalone` and
     single-node c10d; the user's `--rdzv-id`, often the scheduler's job id, on several nodes;
     "none" under the static rendezvous, then left out) and `TORCHELASTIC_RESTART_COUNT` (a
     restarted worker group is a new run of the job: its own directory);
   - `SLURM_JOB_ID` / `SLURM_STEP_ID` where set;
   - `MASTER_ADDR`, `MASTER_PORT` and the world size;
   - on one node (the local world is the whole world, or no local world is said: mp.spawn),
     the launcher's identity: the parent process's pid and its start time (every local rank is
     a child of the same torchrun agent, accelerate launcher or mp.spawn parent; two jobs in a
     row have different launchers), with the start time as the id's readable stamp.

Two jobs in a row on one node always differ (a new launcher process). Across several nodes
the rendezvous id (or SLURM's) must tell jobs apart; under torchrun's static rendezvous
(`--rdzv-id` left as "none") with the same master port twice, set TRAINDOCTOR_RUN_ID.

Several jobs in one process (a second Lightning `fit()`, two `td.watch` blocks in a row) derive
the same id; `unused_by_this_process` then gives the next ones `<id>-2`, `<id>-3`: each rank
looks only at its own directory (a rank.json this very process wrote means an earlier job of
it), so every rank that ran the same jobs picks the same suffix."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from .ranks import RankInfo, process_identity, rank_dir

ENV_RUN_ID = "TRAINDOCTOR_RUN_ID"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def job_run_id(script: str | None, info: RankInfo, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    given = (env.get(ENV_RUN_ID) or "").strip()
    if given:
        return _SAFE.sub("-", given).strip(".-") or "run"
    parts = []
    rdzv = (env.get("TORCHELASTIC_RUN_ID") or "").strip()
    if rdzv and rdzv.lower() != "none":
        parts.append(f"rdzv={rdzv}")
    parts.append(f"restart={env.get('TORCHELASTIC_RESTART_COUNT', '')}")
    for name in ("SLURM_JOB_ID", "SLURM_STEP_ID", "MASTER_ADDR", "MASTER_PORT"):
        parts.append(f"{name}={env.get(name, '')}")
    parts.append(f"world={info.world_size}")
    stamp = None
    one_node = info.local_world_size is None or info.local_world_size == info.world_size
    launcher = _parent_identity() if one_node else None
    if launcher is not None:
        ppid, ticks, started = launcher
        parts.append(f"launcher={ppid}@{ticks}")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    digest = hashlib.sha1("\n".join(parts).encode()).hexdigest()[:8]
    stem = _stem(script)
    return f"{stamp}-{stem}-{digest}" if stamp else f"{stem}-job-{digest}"


def _stem(script: str | None) -> str:
    if not script:
        return "run"
    if script.endswith(".py") or "/" in script or "\\" in script:
        return Path(script).stem
    return script.rsplit(".", 1)[-1]


def _parent_identity() -> tuple[int, int, float] | None:
    """The parent process's pid, its start time in clock ticks since boot (what the hash
    takes: the same integer for every child) and in seconds since the epoch (the stamp), from
    /proc; None where /proc is not there (the id is then made of the environment alone)."""
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[-1].split()
        ticks = int(fields[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/stat", encoding="ascii") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return ppid, ticks, btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def unused_by_this_process(job_id: str, out_dir: Path, info: RankInfo) -> str:
    """`job_id`, or `<job_id>-2`, `-3`, ...: the first whose directory for this rank holds no
    rank.json written by this process (an earlier job of the same process: a second fit())."""
    import json

    me = process_identity()
    candidate = job_id
    for n in range(2, 1000):
        try:
            meta = json.loads(
                (rank_dir(Path(out_dir) / candidate, info.rank) / "rank.json").read_text()
            )
        except (OSError, ValueError):
            return candidate
        if not isinstance(meta, dict) or (meta.get("host"), meta.get("pid")) != (
            me["host"],
            me["pid"],
        ):
            return candidate
        candidate = f"{job_id}-{n}"
    return candidate

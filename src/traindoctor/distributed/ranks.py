"""Which rank this process is in a distributed job: from the environment torchrun, accelerate
and SLURM-style launchers set, else from torch.distributed once initialized (mp.spawn).

Only local lookups: `is_initialized`, `get_rank`, `get_world_size` read the default process
group's own attributes; no collective, no store access."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RANKS_DIR = "ranks"


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int | None = None
    local_world_size: int | None = None
    # where the rank was read: "env" (RANK/WORLD_SIZE) or "torch.distributed"
    source: str = "env"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def detect(environ: Mapping[str, str] | None = None) -> RankInfo | None:
    """This process's rank in a job of more than one process, or None (a single process,
    including torchrun with one process: its layout stays that of a plain run)."""
    env = os.environ if environ is None else environ
    rank, world = _int(env.get("RANK")), _int(env.get("WORLD_SIZE"))
    if rank is not None and world is not None and world > 1 and 0 <= rank < world:
        return RankInfo(
            rank=rank,
            world_size=world,
            local_rank=_int(env.get("LOCAL_RANK")),
            local_world_size=_int(env.get("LOCAL_WORLD_SIZE")),
            source="env",
        )
    if environ is not None:
        return None  # an explicit environment: torch's state is not consulted
    return _from_torch()


def _from_torch() -> RankInfo | None:
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        rank, world = int(dist.get_rank()), int(dist.get_world_size())
    except Exception:  # noqa: BLE001  (an odd backend: treated as a single process)
        return None
    if world <= 1 or not 0 <= rank < world:
        return None
    return RankInfo(rank=rank, world_size=world, source="torch.distributed")


def rank_dir(job_dir: Path, rank: int) -> Path:
    """Where one rank writes its timeline and its own report inside the job's run directory."""
    return Path(job_dir) / RANKS_DIR / f"rank{rank}"


def process_identity() -> dict[str, Any]:
    """What the merge needs to tell a dead rank from one still running: its host and pid."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def alive(identity: Mapping[str, Any]) -> bool | None:
    """Whether the process that wrote `identity` still runs: True/False on the same host, None
    where that cannot be told (another host, no pid)."""
    pid = identity.get("pid")
    if not isinstance(pid, int) or identity.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)  # signal 0: existence only, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed child not yet reaped by its launcher still answers kill(pid, 0)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return False
    after = stat.rsplit(")", 1)[-1].split()
    return bool(after) and after[0] in ("Z", "X")

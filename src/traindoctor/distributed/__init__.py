"""A distributed job (torchrun, accelerate launch, mp.spawn): which rank this process is, the
run id every rank derives alike, and the job's one merged report.

Nothing here calls a torch.distributed collective or makes a rank wait on another during
training: ranks meet only through files in the run directory (RUN_DIR/ranks/rank<N>/), and a
rank waits for the others' files only at its close, for a few seconds at most (merge.py)."""

from __future__ import annotations

from .ranks import RankInfo, detect, rank_dir
from .run_id import job_run_id, unused_by_this_process

__all__ = ["RankInfo", "detect", "rank_dir", "job_run_id", "unused_by_this_process"]

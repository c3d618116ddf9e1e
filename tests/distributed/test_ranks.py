"""Rank detection, the job's run id and the merge, without launching processes."""

from __future__ import annotations

import json
import socket

from traindoctor.distributed import RankInfo, detect, job_run_id
from traindoctor.distributed.merge import CLOSED, KILLED, MISSING, RankResult, merge, scan
from traindoctor.findings import Finding, Severity, Where
from traindoctor.report.model import Report

TORCHRUN = {
    "RANK": "1",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_WORLD_SIZE": "2",
    "TORCHELASTIC_RUN_ID": "4f1c",
    "TORCHELASTIC_RESTART_COUNT": "0",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}


def test_a_rank_is_read_from_torchruns_environment():
    assert detect(TORCHRUN) == RankInfo(
        rank=1, world_size=2, local_rank=1, local_world_size=2, source="env"
    )


def test_one_process_is_not_a_distributed_job():
    assert detect({}) is None
    assert detect({**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1"}) is None  # torchrun, 1 process
    assert detect({**TORCHRUN, "RANK": "x"}) is None


def test_every_rank_derives_the_same_run_id_and_the_next_job_another():
    ranks = [detect({**TORCHRUN, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    ids = {job_run_id("train.py", info, {**TORCHRUN, "RANK": str(info.rank)}) for info in ranks}
    assert len(ids) == 1
    (one,) = ids
    assert "train" in one
    # Another rendezvous (the next torchrun --standalone), or a restart of the worker group.
    assert job_run_id("train.py", ranks[0], {**TORCHRUN, "TORCHELASTIC_RUN_ID": "9a2b"}) != one
    assert job_run_id("train.py", ranks[0], {**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "1"}) != one


def test_the_run_id_can_be_given():
    info = detect(TORCHRUN)
    env = {**TORCHRUN, "TRAINDOCTOR_RUN_ID": "nightly 42/a"}
    assert job_run_id("train.py", info, env) == "nightly-42-a"


def test_static_rendezvous_on_several_nodes_uses_the_environment_alone():
    info = RankInfo(rank=3, world_size=4, local_rank=1, local_world_size=2)
    env = {**TORCHRUN, "TORCHELASTIC_RUN_ID": "none", "RANK": "3", "WORLD_SIZE": "4"}
    one = job_run_id("train.py", info, env)
    assert one.startswith("train-job-")
    assert job_run_id("train.py", info, {**env, "MASTER_PORT": "29501"}) != one


def _finding(code: str, step: int, module: str | None = None, count: int = 1) -> Finding:
    return Finding(
        code,
        code.lower(),
        Severity.WARNING,
        f"{code} title",
        step,
        where=Where(module=module),
        count=count,
        evidence={"step": step},
    )


def test_the_merge_is_one_finding_per_code_and_place_with_its_ranks(tmp_path):
    r0 = Report(
        [_finding("TD104", 5, "fc"), _finding("TD502", 1)],
        steps=20,
        outcome={"ended": "normal", "step": 21, "skipped_rules": []},
    )
    r1 = Report(
        [_finding("TD104", 3, "fc"), _finding("TD104", 4, "head"), _finding("TD502", 1)],
        steps=20,
        outcome={"ended": "normal", "step": 21, "skipped_rules": []},
        internal_errors=[{"where": "probe x", "error": "E", "step": 2}],
    )
    results = [
        RankResult(0, CLOSED, 20, {"ended": "normal"}, r0),
        RankResult(1, CLOSED, 20, {"ended": "normal"}, r1),
    ]
    job = merge(tmp_path, 2, results)
    got = {(f.code, f.where.module): f for f in job.findings}
    assert set(got) == {("TD104", "fc"), ("TD104", "head"), ("TD502", None)}
    fc = got["TD104", "fc"]
    assert fc.ranks == (0, 1) and fc.evidence == {"step": 5} and fc.first_step == 3
    assert got["TD104", "head"].ranks == (1,)
    assert job.internal_errors == [{"where": "probe x", "error": "E", "step": 2, "rank": 1}]
    assert job.outcome["ended"] == "normal"
    data = job.to_dict()
    assert data["world_size"] == 2 and [r["status"] for r in data["ranks"]] == [CLOSED] * 2
    assert merge(tmp_path, 2, results).to_dict() == data  # the same files, the same report


def test_a_dead_rank_and_a_rank_that_wrote_nothing(tmp_path):
    rank0 = tmp_path / "ranks" / "rank0"
    rank0.mkdir(parents=True)
    (rank0 / "findings.json").write_text(
        json.dumps(Report([], steps=9, outcome={"ended": "exception", "step": 10}).to_dict())
    )
    rank1 = tmp_path / "ranks" / "rank1"
    rank1.mkdir(parents=True)
    (rank1 / "rank.json").write_text(
        json.dumps({"rank": 1, "host": socket.gethostname(), "pid": 2**22 + 12345})
    )
    (rank1 / "timeline.jsonl").write_text(
        '{"type":"stream","version":2}\n{"type":"progress","last_step":4}\n{"type":"st'
    )
    results = scan(tmp_path, 3)
    assert [(r.status, r.steps) for r in results] == [(CLOSED, 9), (KILLED, 4), (MISSING, 0)]
    job = merge(tmp_path, 3, results)
    assert job.outcome["ended"] == "abnormal" and job.outcome["abnormal_ranks"] == [0, 1]
    assert job.outcome["unwatched_ranks"] == [2]

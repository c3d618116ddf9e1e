"""A Doctor in one process that torchrun's environment names rank 0 of 2 (no process group
needed: the rank is read from the environment): its layout, the job's report with the missing
rank, a merge that fails, and a plain single process's layout left as it was."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn as nn

import traindoctor as td
from traindoctor.distributed import merge as merge_mod

ENV = {
    "RANK": "0",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "2",
    "LOCAL_WORLD_SIZE": "2",
    "TORCHELASTIC_RUN_ID": "unit",
    "TRAINDOCTOR_MERGE_WAIT": "0",
}


def _train(out_dir, steps=4, watched=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=out_dir, console=False) if watched else None
    with doc or contextlib.nullcontext():
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
    return doc, [p.detach().clone() for p in model.parameters()]


@pytest.fixture
def rank0(monkeypatch):
    monkeypatch.setenv("TRAINDOCTOR_PLOTS", "0")
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


def test_a_rank_writes_under_the_job_and_merges_with_a_missing_rank(rank0, tmp_path):
    doc, _ = _train(tmp_path)
    job_dir = tmp_path / doc.run_id
    assert doc.report.run_dir == job_dir / "ranks" / "rank0"
    own = json.loads((job_dir / "ranks" / "rank0" / "findings.json").read_text())
    assert (own["rank"], own["world_size"], own["steps"]) == (0, 2, 4)
    meta = json.loads((job_dir / "ranks" / "rank0" / "rank.json").read_text())
    assert (meta["rank"], meta["world_size"], meta["run_id"]) == (0, 2, doc.run_id)
    job = json.loads((job_dir / "findings.json").read_text())
    assert [(r["rank"], r["status"]) for r in job["ranks"]] == [(0, "closed"), (1, "missing")]
    # A rank that never attached is not waited for (TRAINDOCTOR_MERGE_WAIT is 0 here anyway),
    # nor called abnormal: it was not watched (an integration that watches rank 0 only).
    assert job["run"] == {"ended": "normal", "step": 4, "unwatched_ranks": [1], "skipped_rules": []}
    assert doc.job_report is not None and doc.job_report.world_size == 2
    assert "rank 1 was not watched" in (job_dir / "report.md").read_text()


def test_a_failing_merge_is_recorded_and_never_reaches_the_loop(rank0, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("merge broke")

    monkeypatch.setattr(merge_mod, "merge_at_close", broken)
    doc, params = _train(tmp_path)
    assert doc.job_report is None
    own = json.loads((tmp_path / doc.run_id / "ranks" / "rank0" / "findings.json").read_text())
    assert any(e["where"] == "merge ranks" for e in own["internal_errors"]), own
    _, plain = _train(tmp_path / "plain", watched=False)
    assert all(torch.equal(a, b) for a, b in zip(params, plain, strict=True))


def test_a_single_process_keeps_its_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINDOCTOR_PLOTS", "0")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    doc, _ = _train(tmp_path)
    run_dir = tmp_path / doc.run_id
    assert doc.report.run_dir == run_dir and not (run_dir / "ranks").exists()
    data = json.loads((run_dir / "findings.json").read_text())
    assert not {"rank", "ranks", "world_size"} & set(data)
    assert all("ranks" not in f for f in data["findings"])


def test_rank0_waits_for_a_running_rank_only_and_only_so_long(rank0, tmp_path, monkeypatch):
    import os
    import socket
    import time

    monkeypatch.setenv("TRAINDOCTOR_MERGE_WAIT", "30")
    t0 = time.monotonic()
    doc, _ = _train(tmp_path / "missing")  # rank 1 never attached: not waited for
    assert time.monotonic() - t0 < 15
    assert [r["status"] for r in doc.job_report.ranks] == ["closed", "missing"]

    # Rank 1 attached and its process runs (this one stands for it): rank 0 waits for it, for
    # TRAINDOCTOR_MERGE_WAIT seconds at most, then writes the report with rank 1 running.
    monkeypatch.setenv("TRAINDOCTOR_MERGE_WAIT", "0.5")
    monkeypatch.setenv("TRAINDOCTOR_RUN_ID", "job")
    rank1 = tmp_path / "running" / "job" / "ranks" / "rank1"
    rank1.mkdir(parents=True)
    meta = {"rank": 1, "world_size": 2, "host": socket.gethostname(), "pid": os.getpid()}
    (rank1 / "rank.json").write_text(json.dumps(meta))
    t0 = time.monotonic()
    doc, _ = _train(tmp_path / "running")
    assert time.monotonic() - t0 >= 0.5
    assert [r["status"] for r in doc.job_report.ranks] == ["closed", "running"]
    assert "rank 1 had not closed" in (tmp_path / "running" / "job" / "report.md").read_text()

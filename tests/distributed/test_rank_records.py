"""The ranks probe's listeners for TD607/TD608 in one process (a world of 1, gloo): which
torch.distributed calls count as a collective on the job's whole group (the collective itself,
not get_rank(), not a subgroup's), and which torch.save calls name a file; both patches
restored exactly, and the call's result unchanged."""

from __future__ import annotations

import io

import pytest
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from traindoctor._patching import acquire, release
from traindoctor.probes import ranks as R


@pytest.fixture
def world(tmp_path):
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_collectives_on_the_whole_group_are_heard(world):
    original = c10d._get_default_group
    heard: list[str] = []
    acquire(R._COLLECTIVE_PATCH)
    R._COLLECTIVE_LISTENERS.append(heard.append)
    try:
        t = torch.ones(3)
        dist.all_reduce(t)
        dist.barrier()
        dist.broadcast(t, src=0)
        dist.get_rank(), dist.get_world_size()  # not collectives
        sub = dist.new_group([0])
        dist.all_reduce(t, group=sub)  # a subgroup: not the whole job's
        assert t.tolist() == [1.0, 1.0, 1.0]
    finally:
        R._COLLECTIVE_LISTENERS.remove(heard.append)
        release(R._COLLECTIVE_PATCH)
    assert heard == ["all_reduce", "barrier", "broadcast"]
    assert c10d._get_default_group is original


def test_saves_to_a_path_are_heard_not_buffers(tmp_path):
    original = torch.save
    heard: list[object] = []
    acquire(R._SAVE_PATCH)
    R._SAVE_LISTENERS.append(heard.append)
    try:
        torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
        torch.save({"w": torch.ones(2)}, str(tmp_path / "b.pt"))
        torch.serialization.save({"w": torch.ones(2)}, io.BytesIO())
    finally:
        R._SAVE_LISTENERS.remove(heard.append)
        release(R._SAVE_PATCH)
    assert len(heard) == 3  # the probe keeps the two paths (str | PathLike)
    assert torch.load(tmp_path / "a.pt")["w"].tolist() == [1.0, 1.0]
    assert torch.save is original and torch.serialization.save is original

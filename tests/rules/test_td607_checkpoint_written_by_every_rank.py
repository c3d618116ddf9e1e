"""TD607 checkpoint-written-by-every-rank on hand-built job timelines; the real 2-rank jobs
(torch.save to one path on every rank, and rank 0 only with per-rank optimizer files):
tests/distributed/test_td60x_jobs.py."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _save(path, host="node0", source="train.py:50"):
    return {"path": path, "host": host, "source": source}


def _job(saves, ranks=("0", "1")):
    steps = {0: {"job.ranks": {r: {"last_step": 12} for r in ranks}}}
    for s, by_rank in saves.items():
        steps[s] = {"job.save": by_rank}
    return make_timeline(params=["module.w"], steps=steps, last_step=12)


def test_one_path_from_every_rank_fires():
    saves = {s: {"0": [_save("/ckpt/model.pt")], "1": [_save("/ckpt/model.pt")]} for s in (5, 9)}
    f = assert_fires("TD607", _job(saves))
    assert f.evidence["ranks"] == [0, 1] and f.evidence["path"] == "/ckpt/model.pt"
    assert f.evidence["same_steps"] == [4, 8] and f.where.source == "train.py:50"


def test_rank0_only_and_per_rank_paths_are_silent():
    saves = {
        5: {
            "0": [_save("/ckpt/model.pt"), _save("/ckpt/optim0.pt")],
            "1": [_save("/ckpt/optim1.pt")],
        }
    }
    assert_silent("TD607", _job(saves))


def test_different_hosts_may_be_local_disks():
    saves = {5: {"0": [_save("/scratch/model.pt")], "1": [_save("/scratch/model.pt", "node1")]}}
    assert_silent("TD607", _job(saves))


def test_one_rank_saving_repeatedly_is_silent():
    assert_silent("TD607", _job({s: {"0": [_save("/ckpt/last.pt")]} for s in (3, 5, 7)}))

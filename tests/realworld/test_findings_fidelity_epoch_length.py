"""The epoch length TD503 judges a per-batch StepLR by is `len(loader)` as the data probe
records it: what the sampler yields (a DistributedSampler's shard, a WeightedRandomSampler's
num_samples, a batch_sampler, drop_last), not the data set's length over the batch size.
Measured on /tmp reproductions (10 epochs of a 1280-example set, StepLR(step_size=20) per
batch, DistributedSampler rank 0 of 4 or WeightedRandomSampler(num_samples=320)): TD503 said
'2 times an epoch of 40 steps' where an epoch was 10 steps; a batch_sampler loader was never
judged."""

from __future__ import annotations

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

from traindoctor.probes.data import describe_loader

DS = TensorDataset(torch.randn(1280, 4), torch.zeros(1280))


class Stream(IterableDataset):
    def __iter__(self):
        yield from DS

    def __len__(self):
        return len(DS)


def _batches(loader) -> int | None:
    facts = describe_loader(loader)
    assert facts is not None
    return facts["batches"]


def test_batches_follow_the_sampler():
    assert _batches(DataLoader(DS, batch_size=32)) == 40
    assert _batches(DataLoader(DS, batch_size=48, drop_last=True)) == 26
    shard = DistributedSampler(DS, num_replicas=4, rank=1, shuffle=True)
    assert _batches(DataLoader(DS, batch_size=32, sampler=shard)) == 10
    weighted = WeightedRandomSampler(torch.ones(1280), num_samples=320)
    assert _batches(DataLoader(DS, batch_size=32, sampler=weighted)) == 10
    by_batch = BatchSampler(RandomSampler(DS), batch_size=100, drop_last=False)
    assert _batches(DataLoader(DS, batch_sampler=by_batch)) == 13


def test_an_iterable_data_set_has_no_known_epoch():
    assert _batches(DataLoader(Stream(), batch_size=32)) is None


def test_describing_draws_nothing_from_the_sampler():
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(DS, batch_size=32, sampler=RandomSampler(DS, generator=g))
    state = g.get_state()
    describe_loader(loader)
    assert torch.equal(g.get_state(), state)

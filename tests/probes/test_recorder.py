"""The batched read-back returns every deferred value exactly and in the callers' order."""

import random

import torch

from traindoctor.probes.base import Recorder, _to_host
from traindoctor.timeline import Timeline


def test_to_host_matches_per_tensor_reads_for_mixed_dtypes_and_ranks():
    rng = random.Random(3)
    tensors = []
    for _ in range(60):
        kind = rng.randrange(5)
        if kind == 0:
            tensors.append(torch.tensor(rng.random()))
        elif kind == 1:
            tensors.append(torch.randn(rng.randrange(1, 5), dtype=torch.float64))
        elif kind == 2:
            tensors.append(torch.tensor(rng.random() < 0.5))
        elif kind == 3:
            tensors.append(torch.tensor([rng.random()], dtype=torch.bfloat16))
        else:
            tensors.append(torch.tensor(rng.randrange(100)))
    expected = [v for t in tensors for v in t.reshape(-1).to(torch.float64).tolist()]
    assert _to_host(tensors) == expected
    assert _to_host(tensors[:1]) == expected[: tensors[0].numel()]


def test_recorder_keeps_float32_losses_bit_exact():
    rec = Recorder(Timeline())
    values = [torch.tensor(v, dtype=torch.float32) for v in (0.1, 1 / 3, 2.5e-8)]
    for step, v in enumerate(values, 1):
        rec.defer(step, "loss", v, append=True)
    rec.defer(1, "lr", torch.tensor([1e-3, 2e-3]), keys=["a", "b"])
    rec.readback()
    for step, v in enumerate(values, 1):
        assert rec.timeline.get(step, "loss") == [float(v)]
    assert rec.timeline.get(1, "lr") == {
        "a": float(torch.tensor(1e-3)),
        "b": float(torch.tensor(2e-3)),
    }

"""FSDP2 (`fully_shard`) and tensor parallelism hold parameters, gradients and what is computed
from them as DTensors. traindoctor reads each rank's own shard (`to_local()`: a view, never a
collective); an op that mixed a DTensor with a plain tensor, or asked a DTensor for its full
value (`.tolist()`, `.item()`, `full_tensor()`), would fail or all-reduce/all-gather across
ranks. torch.distributed.tensor is not imported: a DTensor is told by its `to_local` method."""

from __future__ import annotations

from typing import Any

import torch

_PLAIN = frozenset((torch.Tensor, torch.nn.Parameter))


def local(t: Any) -> Any:
    """This rank's shard of a DTensor (its local tensor, a view); anything else as it is."""
    if type(t) in _PLAIN:
        return t
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def local_all(tensors: list[Any]) -> list[Any]:
    """`local` of each, the same list where none is a DTensor (the usual case: no copy)."""
    if _PLAIN.issuperset(map(type, tensors)):  # in C: ~1% of the norms' own cost
        return tensors
    return [local(t) for t in tensors]

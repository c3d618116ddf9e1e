"""Probes collect signals into the timeline; see base.py for the contract."""

from __future__ import annotations

from .amp import AmpProbe
from .base import Probe
from .forward import ForwardProbe
from .grads import GradsProbe
from .loss import LossProbe
from .optim import OptimProbe
from .params import ParamsProbe

# Order matters where probes share a step event: params snapshot before grads are read, etc.
PROBES: tuple[type[Probe], ...] = (
    ParamsProbe,
    OptimProbe,
    GradsProbe,
    LossProbe,
    ForwardProbe,
    AmpProbe,
)


def default_probes() -> list[Probe]:
    return [cls() for cls in PROBES]

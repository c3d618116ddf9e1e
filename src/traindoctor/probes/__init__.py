"""Probes collect signals into the timeline; see base.py for the contract."""

from __future__ import annotations

from .activations import ActivationsProbe
from .amp import AmpProbe
from .audit import AuditProbe
from .base import Probe
from .capture import CaptureProbe
from .copies import CopiesProbe
from .cycles import CyclesProbe
from .data import DataProbe
from .forward import ForwardProbe
from .gradpath import GradPathProbe
from .grads import GradsProbe
from .hidden_params import HiddenParamsProbe
from .init import InitProbe
from .loss import LossProbe
from .loss_inputs import LossInputsProbe
from .memory import MemoryProbe
from .metric_calls import MetricCallsProbe
from .metrics import MetricsProbe
from .modes import FrozenModesProbe, ModesProbe
from .numerics import NumericsProbe
from .optim import OptimProbe
from .params import ParamsProbe
from .ranks import RanksProbe
from .schedule import ScheduleProbe
from .softmax_dims import SoftmaxDimsProbe
from .work import WorkProbe

# Order matters where probes share a step event: params snapshot before grads are read, etc.
PROBES: tuple[type[Probe], ...] = (
    ParamsProbe,
    OptimProbe,
    GradsProbe,
    CyclesProbe,
    LossProbe,
    LossInputsProbe,
    ForwardProbe,
    DataProbe,
    AmpProbe,
    InitProbe,
    NumericsProbe,
    GradPathProbe,
    ActivationsProbe,
    MetricsProbe,
    MetricCallsProbe,
    ModesProbe,
    AuditProbe,
    MemoryProbe,
    FrozenModesProbe,
    ScheduleProbe,
    CopiesProbe,
    WorkProbe,
    RanksProbe,
    CaptureProbe,
    SoftmaxDimsProbe,
    HiddenParamsProbe,
)


def default_probes() -> list[Probe]:
    return [cls() for cls in PROBES]

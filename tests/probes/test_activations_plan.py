"""The activations probe's plan: once two full forwards agree, a sampled forward leaves the
TorchFunctionMode and the module hooks after its last recorded activation call. What it
records must be what full forwards record, in every style of model; a forward that changes
drops the plan."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests._loop import watch
from traindoctor.probes import activations as act_mod

torch.set_num_threads(1)
SIGNALS = (
    "activations.sites",
    "activations.dead",
    "activations.saturated",
    "activations.pre_mean",
    "activations.pre_std",
    "activations.bias_mean",
    "activations.input_std",
)


class Modules(nn.Module):
    """ReLU modules, one reused, then a long tail without activations."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.act = nn.ReLU()
        self.tail = nn.Sequential(*(nn.Linear(16, 16) for _ in range(6)))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        h = self.act(self.fc2(h) + h)  # an input no module produced: named after `act`
        return self.head(self.tail(h))


class Functional(nn.Module):
    """Functional tanh/sigmoid/relu in the root's own code, two calls in one module."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = x + 0.1 * (torch.tanh(layer(x)) if i % 2 else torch.sigmoid(layer(x)))
        x = F.relu(x) + F.relu(-x)
        return self.head(x)


class NoTracked(nn.Module):
    """GELU only: the mode records nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ManySites(nn.Module):
    """More activation sites than MAX_SITES: the later ones are never recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(act_mod.MAX_SITES + 40))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + 0.1 * torch.tanh(b(x))
        return x


class Dynamic(nn.Module):
    """A forward whose activation calls change with the step: the plan must not hold."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = torch.relu(self.fc1(x))
        if self.calls % 3 == 0:
            h = torch.tanh(h * 2)  # one more site on some forwards
        out = self.fc2(h)
        if self.calls % 2 == 0:
            out = out + 0.0 * torch.sigmoid(out)  # and one after the last module
        return out


def _records(tmp_path, make, steps: int, accumulate: int = 1) -> dict[str, list]:
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, opt, tmp_path)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            x = torch.randn(16, 8 if not isinstance(model, ManySites) else 4, generator=g)
            model(x).pow(2).mean().backward()
        opt.step()
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    return {s: report.timeline.series(s) for s in SIGNALS}


@pytest.mark.parametrize(
    ("make", "accumulate"),
    [(Modules, 1), (Functional, 2), (NoTracked, 1), (ManySites, 1), (Dynamic, 1)],
)
def test_planned_forwards_record_what_full_forwards_record(tmp_path, monkeypatch, make, accumulate):
    steps = 45  # sampled steps 1-3, 10, 20, 30, 40: planned forwards from the fourth one
    planned = _records(tmp_path / "planned", make, steps, accumulate)
    monkeypatch.setattr(act_mod, "VERIFY_EVERY", 1)  # every forward in full
    monkeypatch.setattr(act_mod, "VERIFY_MAX", 1)
    full = _records(tmp_path / "full", make, steps, accumulate)
    assert planned == full
    assert planned["activations.input_std"]


def test_plan_is_taken_and_leaves_the_mode_early(tmp_path, monkeypatch):
    """On the many-sites model the planned forwards see a fraction of the ops."""
    seen: list[tuple[int, int]] = []
    orig = act_mod.ActivationsProbe._enter_mode

    def enter(self):
        if self._forwards:
            seen.append((self._stop_at, self._ops))  # the previous forward's plan and ops
        orig(self)

    monkeypatch.setattr(act_mod.ActivationsProbe, "_enter_mode", enter)
    _records(tmp_path, ManySites, 45)
    full_ops = max(ops for _, ops in seen)
    planned = [ops for stop, ops in seen if stop >= 0]
    assert planned and all(ops < full_ops for ops in planned)


def _two_model_records(tmp_path, steps: int) -> dict[str, list]:
    """A GAN-like order of forwards, D twice then G, on the structural and later steps: a plan
    agreed on D's forwards must not cut G's short."""
    torch.manual_seed(0)
    d, g_ = Modules(), Functional()
    opt = torch.optim.SGD([*d.parameters(), *g_.parameters()], lr=0.01)
    doc = watch([d, g_], opt, tmp_path)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(16, 8, generator=gen)
        loss = d(x).pow(2).mean() + d(x * 0.5).pow(2).mean() + g_(x).pow(2).mean()
        loss.backward()
        opt.step()
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    return {s: report.timeline.series(s) for s in SIGNALS}


def test_a_plan_holds_for_the_model_whose_forwards_agreed(tmp_path, monkeypatch):
    planned = _two_model_records(tmp_path / "planned", 25)
    monkeypatch.setattr(act_mod, "VERIFY_EVERY", 1)  # every forward in full
    monkeypatch.setattr(act_mod, "VERIFY_MAX", 1)
    full = _two_model_records(tmp_path / "full", 25)
    assert planned == full
    g_sites = [n for _, sites in planned["activations.sites"] for n in sites if ".layers." in n]
    assert g_sites  # G's functional calls are recorded on the planned steps too

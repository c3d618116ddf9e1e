"""Zero-code discovery in-process: which models, optimizers and losses `traindoctor run` finds."""

from __future__ import annotations

import torch
from torch import nn

from traindoctor.doctor import Doctor
from traindoctor.integrations.autopatch import attached

torch.set_num_threads(1)


class EncDec(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        self.decoder = nn.Linear(8, 2)


def _doctor(tmp_path) -> Doctor:
    return Doctor(out_dir=tmp_path, mode="zero-code", console=False)


def test_model_is_found_when_only_its_submodules_are_called(tmp_path):
    doctor = _doctor(tmp_path)
    with attached(doctor):
        model = EncDec()
        opt = torch.optim.SGD(model.decoder.parameters(), lr=0.1)  # encoder left out
        for _ in range(4):
            opt.zero_grad()
            loss = model.decoder(model.encoder(torch.randn(3, 4))).pow(2).mean()
            loss.backward()
            opt.step()
    report = doctor.close()
    # Named from the outermost module that holds the optimizer's params, not from the
    # submodules that happened to be called.
    assert set(doctor.timeline.facts["params"]) == {
        "encoder.weight",
        "encoder.bias",
        "decoder.weight",
        "decoder.bias",
    }
    f = report.get("TD103")
    assert f is not None and f.where.module == "encoder"
    assert set(f.where.params) == {"encoder.weight", "encoder.bias"}
    assert f.step == 1


def _gan(steps: int, zero_g: bool = True) -> tuple[nn.Module, ...]:
    # Each optimizer steps its own model; D's backward also reaches G (no detach), so G's
    # .grad holds D's contribution until opt_g.zero_grad(): legitimate, not TD106.
    gen, disc = nn.Linear(4, 4), nn.Linear(4, 1)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    for _ in range(steps):
        for opt in (opt_d, opt_g):
            if opt is opt_d or zero_g:
                opt.zero_grad()
            loss = disc(gen(torch.randn(5, 4))).mean()
            loss.backward()
            opt.step()
    return gen, disc  # (zero-code mode holds the models weakly: the caller keeps them)


def test_two_models_with_two_optimizers_are_both_watched_and_healthy(tmp_path):
    doctor = _doctor(tmp_path)
    with attached(doctor):
        kept = _gan(30)
        watched = len(doctor.optimizers), len(doctor.models)
        del kept
    report = doctor.close()
    assert watched == (2, 2)  # read before close: a closed doctor holds them weakly
    # Updates and zeroing are judged per optimizer, not at the primary optimizer's step only.
    assert [f.code for f in report.findings if f.severity.value != "info"] == []


def test_second_optimizer_that_never_zeroes_is_found(tmp_path):
    doctor = _doctor(tmp_path)
    with attached(doctor):
        _gan(30, zero_g=False)
    report = doctor.close()
    f = report.get("TD106")
    assert f is not None
    assert set(f.where.params) == {"Linear.weight", "Linear.bias"}  # the generator's, only
    assert "TD104" not in report.codes

"""Models and optimizers that first appear in a later phase of the run, under zero-code
discovery (what `traindoctor run script.py` does, in process).

Real programs train in phases: a teacher, then a student distilled from it
(Joyful-Buffalo/simplest-knowledge-distillation, seven phases in one script); an encoder
pretrained, then a classifier fine-tuned over it with a new optimizer; a critic built after the
generator's warm-up. Zero-code attach happens at the first backward, so only the first phase's
models were watched: a student whose loop never zeroed its gradients, or whose optimizer was
built over the teacher, was 'healthy'. Now an optimizer built after attach opens a window of
its first steps in which the models it trains (owners of its tensors) and the root modules
called in training with gradient on whose params no watched model holds are watched too. Each
bug below has a healthy twin that must stay silent (the earlier phase's model, which no longer
steps, is done, not frozen).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from traindoctor.doctor import Doctor
from traindoctor.findings import Severity
from traindoctor.integrations.autopatch import attached

pytestmark = pytest.mark.slow

_LOUD = (Severity.ERROR, Severity.WARNING)


def _zero_code(tmp_path, program, variant: str) -> list:
    torch.manual_seed(0)
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        program(variant)
    report = doctor.close()
    assert not report.internal_errors, report.internal_errors
    return report.findings


def _loud(findings: list) -> list:
    return [(f.code, f.severity.name, f.title) for f in findings if f.severity in _LOUD]


def _top3(findings: list) -> list[str]:
    return [f.code for f in findings if f.severity in _LOUD][:3]


def distillation(variant: str) -> None:
    """A teacher trained with its own Adam, then frozen (eval) to distill a new student with a
    new Adam: KL on temperature-scaled softmaxes x T^2 + CE."""
    w = torch.randn(8, 4)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    t_opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(15):
        x = torch.randn(64, 8)
        loss = F.cross_entropy(teacher(x), (x @ w).argmax(1))
        t_opt.zero_grad()
        loss.backward()
        t_opt.step()
    teacher.eval()
    student = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    if variant == "student-in-eval":
        student.eval()  # BUG: eval() meant for the teacher, called on the student too
    over = teacher if variant == "optimizer-on-teacher" else student
    s_opt = torch.optim.Adam(over.parameters(), lr=1e-2)
    for _ in range(30):
        x = torch.randn(64, 8)
        if variant != "no-zero-grad":
            s_opt.zero_grad()
        out = student(x)
        with torch.no_grad():
            soft = F.softmax(teacher(x) / 2.0, dim=1)
        kd = F.kl_div(F.log_softmax(out / 2.0, dim=1), soft, reduction="batchmean")
        loss = 0.5 * kd * 4.0 + 0.5 * F.cross_entropy(out, (x @ w).argmax(1))
        loss.backward()
        s_opt.step()


def pretrain_finetune(variant: str) -> None:
    """An autoencoder's encoder pretrained, then a classifier built over it (a new head) and
    fine-tuned with a new SGD."""
    x = torch.randn(512, 20)
    y = (x[:, :3].sum(1) > 0).long()
    enc = nn.Sequential(nn.Linear(20, 32), nn.ReLU())
    dec = nn.Linear(32, 20)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-2)
    for _ in range(15):
        idx = torch.randint(0, 512, (32,))
        loss = F.mse_loss(dec(enc(x[idx])), x[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf = nn.Sequential(enc, nn.Linear(32, 2))
    over = enc if variant == "head-not-in-optimizer" else clf
    opt2 = torch.optim.SGD(over.parameters(), lr=0.1)
    for _ in range(30):
        idx = torch.randint(0, 512, (32,))
        loss = F.cross_entropy(clf(x[idx]), y[idx])
        if variant != "no-zero-grad":
            opt2.zero_grad()
        if variant != "backward-removed":  # pyod#711: Deep SVDD's backward commented out
            loss.backward()
        opt2.step()


def late_critic(variant: str) -> None:
    """A WGAN-GP-free toy: the generator warms up toward the data mean alone, then a critic and
    its optimizer are built and stepped 3 times per generator step."""
    gen = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)

    def real(n: int) -> torch.Tensor:
        return torch.randn(n, 2) * 0.5 + torch.tensor([2.0, -1.0])

    for _ in range(10):
        loss = (gen(torch.randn(64, 8)).mean(0) - real(64).mean(0)).pow(2).sum()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    critic = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(12):
        for _ in range(3):
            fake = gen(torch.randn(64, 8)).detach()
            loss_c = critic(fake).mean() - critic(real(64)).mean()
            if variant != "critic-no-zero-grad":
                opt_c.zero_grad()
            loss_c.backward()
            opt_c.step()
            with torch.no_grad():
                for p in critic.parameters():
                    p.clamp_(-0.1, 0.1)
        loss_g = -critic(gen(torch.randn(64, 8))).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()


def late_mean_teacher(variant: str) -> None:
    """Supervised warm-up, then a mean-teacher phase: an EMA copy made at the phase's start,
    run in train mode with gradient on and its output detached (the targets), updated by lerp;
    a new Adam over the student. The EMA gets no gradient: it is not a model this phase trains
    (no TD103 for it)."""
    import copy

    x = torch.randn(512, 20)
    y = (x[:, :3].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(10):
        idx = torch.randint(0, 512, (32,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ema = copy.deepcopy(model)
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        idx = torch.randint(0, 512, (32,))
        xb = x[idx]
        target = ema(xb + 0.1 * torch.randn_like(xb)).detach()
        out = model(xb)
        loss = F.cross_entropy(out, y[idx]) + F.mse_loss(out.softmax(1), target.softmax(1))
        opt2.zero_grad()
        loss.backward()
        opt2.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 0.01)


class _LinearProbe(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the backbone stays as it is (its requires_grad left on)
            feats = self.backbone(x)
        return self.head(feats)


def late_linear_probe(variant: str) -> None:
    """A model trained, then a linear probe over a new backbone (loaded, never trained here):
    its optimizer holds the head only, the backbone runs under no_grad with requires_grad
    left on. The probe is watched from its optimizer's tensors; the backbone's params, in no
    optimizer and with no gradient, are no TD103 (their forwards were not measured)."""
    x = torch.randn(256, 20)
    y = (x[:, :3].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(10):
        idx = torch.randint(0, 256, (32,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe = _LinearProbe(nn.Sequential(nn.Linear(20, 32), nn.ReLU()))
    opt2 = torch.optim.SGD(probe.head.parameters(), lr=0.1)
    for _ in range(20):
        idx = torch.randint(0, 256, (32,))
        loss = F.cross_entropy(probe(x[idx]), y[idx])
        opt2.zero_grad()
        loss.backward()
        opt2.step()


@pytest.mark.parametrize(
    "program",
    [distillation, pretrain_finetune, late_critic, late_mean_teacher, late_linear_probe],
)
def test_healthy_later_phases_stay_silent(tmp_path, program):
    findings = _zero_code(tmp_path, program, "healthy")
    assert not _loud(findings), _loud(findings)


@pytest.mark.parametrize(
    ("program", "variant", "expected", "phase_start"),
    [
        (distillation, "no-zero-grad", {"TD106"}, 16),
        (distillation, "optimizer-on-teacher", {"TD103", "TD102", "TD105"}, 16),
        (distillation, "student-in-eval", {"TD402"}, 16),
        (pretrain_finetune, "no-zero-grad", {"TD106"}, 16),
        (pretrain_finetune, "head-not-in-optimizer", {"TD103"}, 16),
        (pretrain_finetune, "backward-removed", {"TD102"}, 16),
        (late_critic, "critic-no-zero-grad", {"TD106"}, 11),
    ],
)
def test_a_later_phase_bug_is_caught(tmp_path, program, variant, expected, phase_start):
    findings = _zero_code(tmp_path, program, variant)
    assert expected & set(_top3(findings)), _loud(findings)
    hit = next(f for f in findings if f.code in expected and f.severity in _LOUD)
    # Said of the later phase: the step is one of its steps, the names are the new model's.
    assert hit.step >= phase_start, (hit.code, hit.step)
    if variant == "optimizer-on-teacher":
        # The teacher its optimizer holds gets no gradient (no_grad forwards): its eval mode is
        # not 'trained in eval mode' (TD402 said so, ranked first, before the modes probe
        # counted only the models whose held params have a gradient).
        assert "TD402" not in {f.code for f in findings}, _loud(findings)


def test_an_optimizer_built_every_step_closes_its_windows(tmp_path):
    """Plain SGD rebuilt at every step over the same model (seen in tutorials): each new
    optimizer would open a later phase; after LATE_WINDOWS of them none does, every window is
    closed (counted in step() calls: the step clock does not move here, as no new optimizer
    steps twice), no model is added, and nothing is reported."""
    torch.manual_seed(0)
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor) as session:
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
        w = torch.randn(10, 1)
        for _ in range(40):
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            x = torch.randn(32, 10)
            loss = F.mse_loss(model(x), x @ w)
            opt.zero_grad()
            loss.backward()
            opt.step()
        late = session._late_opts
    report = doctor.close()
    assert not report.internal_errors
    assert late is None
    assert list(doctor.models) == [""]
    assert not _loud(report.findings), _loud(report.findings)

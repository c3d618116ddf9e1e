"""Leftovers of the trust work (session 31).

An EMA copy evaluated in train mode: `ema = copy.deepcopy(model)` keeps the model's train
mode, and an EMA updated by `lerp_`/`mul_().add_()` under no_grad is never trained, so unless
the user calls `ema.eval()` its BatchNorm normalizes every evaluation batch by itself (and
updates the copy's running statistics with evaluation data) and its Dropout drops units
(timm #245 "EMA validation error"; on the first program below the EMA's accuracy is 0.80 in
train mode against 0.89 in eval). TD403 only looked at watched models. The heap is now scanned
at the run's first evaluation for unwatched copies of a watched model (same class, same
parameter names and shapes, no param in an optimizer) and their gradient-free forwards are
read. Healthy twins: the copy put in eval once, a model without BN/Dropout, a mean teacher run
in every step, SWA's `update_bn` (which sets the copy's mode itself).

TD403's event cap was shared by all models: a watched teacher's gradient-free passes in each
step used up the 100 events, and a later validation of the student in train mode went
unreported. The cap is per model now.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.doctor import Doctor
from traindoctor.findings import Severity
from traindoctor.integrations.autopatch import attached

_LOUD = (Severity.ERROR, Severity.WARNING)


def _watch(tmp_path):
    return lambda m, o: td.watch(m, o, out_dir=tmp_path, console=False)


def _report(doc):
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    return report.findings


def _zero_code(tmp_path, program, **kw):
    doc = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doc):
        program(**kw)
    return _report(doc)


def _loud(findings):
    return [(f.code, f.title) for f in findings if f.severity in _LOUD]


def _td403(findings):
    return [f for f in findings if f.code == "TD403"]


# -- a hand-written timm-style EMA wrapper, validated each epoch -------------------------------
class ModelEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.99) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)  # (timm's ModelEmaV2 calls .eval() here)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(m, alpha=1 - self.decay)
            else:
                e.copy_(m)


def classifier_with_ema(watch=None, fix=False, plain=False):
    torch.manual_seed(0)
    w = torch.randn(20, 5)
    x, xv = torch.randn(512, 20), torch.randn(128, 20)
    y, yv = (x @ w).argmax(1), (xv @ w).argmax(1)
    if plain:
        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    else:
        model = nn.Sequential(
            nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 5)
        )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    doc = watch(model, opt) if watch else None
    ema = ModelEma(model)
    if fix:
        ema.eval()
    for _ in range(3):
        model.train()
        for i in range(0, 512, 64):
            loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update(model)
        model.eval()
        with torch.no_grad():
            for j in range(0, 128, 32):
                (model(xv[j : j + 32]).argmax(1) == yv[j : j + 32]).float().mean()
                (ema.module(xv[j : j + 32]).argmax(1) == yv[j : j + 32]).float().mean()
    return doc


def test_timm_style_ema_validated_in_train_mode_is_td403(tmp_path):
    found = _td403(_report(classifier_with_ema(_watch(tmp_path))))
    assert len(found) == 1, found
    f = found[0]
    assert "`ModelEma`, an unwatched copy of the model" in f.title
    assert f.evidence["modules_in_train_mode"] == ["ModelEma.module.1", "ModelEma.module.3"]
    assert f.evidence["evaluations_affected"] == 3
    with open(__file__) as f_:
        line = next(i for i, t in enumerate(f_, 1) if "(ema.module(xv" in t)
    assert f.where.source.endswith(f"test_leftovers_s31.py:{line}")  # the user's call


@pytest.mark.parametrize("twin", ["fix", "plain"])
def test_timm_style_ema_twins_are_silent(tmp_path, twin):
    """Put in eval once (the copy is never trained), or no BN/Dropout (train mode changes
    nothing): nothing to say."""
    findings = _report(classifier_with_ema(_watch(tmp_path), **{twin: True}))
    assert not _loud(findings), _loud(findings)


# -- a diffusion-style EMA: deepcopy, lerp_, sampled under inference_mode ----------------------
class Denoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2, 16, 3, padding=1),
            nn.BatchNorm1d(16),
            nn.SiLU(),
            nn.Dropout(0.1),
            nn.Conv1d(16, 1, 3, padding=1),
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, t.expand_as(x)], 1))


def denoiser_with_ema(fix=False):
    torch.manual_seed(1)
    model = Denoiser()
    ema = copy.deepcopy(model).requires_grad_(False)
    if fix:
        ema.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    data = torch.sin(torch.linspace(0, 6.28, 32)).repeat(64, 1, 1) * torch.rand(64, 1, 1)
    for step in range(30):
        x0 = data[torch.randint(0, 64, (16,))]
        t = torch.rand(16, 1, 1)
        noise = torch.randn_like(x0)
        loss = ((model((1 - t) * x0 + t * noise, t) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 0.05)
        if (step + 1) % 10 == 0:
            with torch.inference_mode():
                x = torch.randn(8, 1, 32)
                for k in range(3, 0, -1):
                    x = x - 0.3 * ema(x, torch.full((8, 1, 1), k / 3))


def test_diffusion_ema_sampled_in_train_mode_is_td403_zero_code(tmp_path):
    found = _td403(_zero_code(tmp_path, denoiser_with_ema))
    assert len(found) == 1, found
    assert "`Denoiser`, an unwatched copy of the model" in found[0].title
    assert found[0].evidence["evaluations_affected"] == 3


def test_diffusion_ema_in_eval_is_silent_zero_code(tmp_path):
    findings = _zero_code(tmp_path, denoiser_with_ema, fix=True)
    assert not _td403(findings)


# -- healthy: a mean teacher run in every step; SWA with update_bn -----------------------------
def mean_teacher(watch):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    teacher = copy.deepcopy(model)  # left in train mode: its BN sees each batch, on purpose
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, opt)
    for _ in range(3):
        for _ in range(12):
            x = torch.randn(32, 10)
            with torch.no_grad():
                target = F.softmax(teacher(x + 0.1 * torch.randn_like(x)), 1)
            loss = F.kl_div(F.log_softmax(model(x), 1), target, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pt, ps in zip(teacher.parameters(), model.parameters()):
                    pt.mul_(0.95).add_(ps, alpha=0.05)
        model.eval()
        with torch.no_grad():
            model(torch.randn(64, 10))
            model(torch.randn(64, 10))
        model.train()
    return doc


def test_mean_teacher_in_every_step_is_silent(tmp_path):
    assert not _td403(_report(mean_teacher(_watch(tmp_path))))


def swa(watch):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, opt)
    swa_model = torch.optim.swa_utils.AveragedModel(model)
    xs = [torch.randn(32, 10) for _ in range(8)]
    for epoch in range(4):
        for x in xs:
            loss = F.cross_entropy(model(x), x[:, :3].argmax(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch >= 1:
            swa_model.update_parameters(model)
            torch.optim.swa_utils.update_bn(xs, swa_model)  # sets train mode itself
            model.eval()
            with torch.no_grad():
                model(xs[0])
                model(xs[1])
            model.train()
    return doc


def test_swa_update_bn_is_silent(tmp_path):
    assert not _td403(_report(swa(_watch(tmp_path))))


# -- the event cap is per model ------------------------------------------------------------------
def teacher_then_validation(tmp_path):
    """A watched frozen teacher run twice per step without gradient (110 steps), then the
    student validated in train mode."""
    torch.manual_seed(4)
    student = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    teacher = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    doc = td.watch({"student": student, "teacher": teacher}, opt, out_dir=tmp_path, console=False)
    for _ in range(110):
        x = torch.randn(16, 6)
        with torch.no_grad():
            soft = (teacher(x) + teacher(x.flip(0)).flip(0)).softmax(1)
        loss = F.cross_entropy(student(x), soft)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # no student.eval()
        student(torch.randn(32, 6))
        student(torch.randn(32, 6))
    return doc


def test_teacher_passes_do_not_use_up_the_students_validation_events(tmp_path):
    found = _td403(_report(teacher_then_validation(tmp_path)))
    assert [f.evidence["model"] for f in found] == ["student"], found


# -- TD511: class 0 a start token of a seq2seq, not 1-based labels --------------------------------
class Seq2Seq(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.enc = nn.GRU(16, 32, batch_first=True)
        self.dec = nn.GRU(16, 32, batch_first=True)
        self.out = nn.Linear(32, vocab)

    def forward(self, src, dec_in):
        _, h = self.enc(self.emb(src))
        return self.out(self.dec(self.emb(dec_in), h)[0])


def test_seq2seq_whose_class_0_is_the_start_token_is_not_one_based_labels(tmp_path):
    """Reverse a sequence: token 0 is SOS (the decoder's first input), 1 is EOS, never is 0 a
    target. TD511 said '1-based labels'."""
    torch.manual_seed(0)
    sos, eos, vocab = 0, 1, 10
    model = Seq2Seq(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for _ in range(30):
        src = torch.randint(2, vocab, (16, 5))
        tgt = torch.cat([src.flip(1), torch.full((16, 1), eos)], 1)
        dec_in = torch.cat([torch.full((16, 1), sos), tgt[:, :-1]], 1)
        loss = F.cross_entropy(model(src, dec_in).reshape(-1, vocab), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not [f for f in _report(doc) if f.code == "TD511"]


# -- TD210/TD108: a second task's loop, after the structural steps -------------------------------
class LoRALinear(nn.Module):
    """A frozen linear layer with a low-rank adapter written by hand."""

    def __init__(self, i: int, o: int, r: int = 4) -> None:
        super().__init__()
        self.base = nn.Linear(i, o).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, i) / i**0.5)
        self.B = nn.Parameter(torch.zeros(o, r))

    def forward(self, x):
        return self.base(x) + x @ self.A.t() @ self.B.t()

    def reset(self) -> None:
        with torch.no_grad():
            self.A.normal_(0, self.A.shape[1] ** -0.5)
            self.B.zero_()


def test_second_task_start_is_a_phase_not_a_spike(tmp_path):
    """Task A trains the adapters for 150 steps; they are reset and task B (larger targets)
    trains in its own loop. TD210 read task B's first loss as a spike at step 151 (the new
    backward() line was not re-read after the structural steps) and TD108 as a rise over the
    run; the phase is dated at 151 now and each rule judges the last phase alone."""
    torch.manual_seed(0)
    model = nn.Sequential(LoRALinear(16, 64), nn.ReLU(), LoRALinear(64, 4))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    wa, wb = torch.randn(16, 4) * 0.3, torch.randn(16, 4) * 3
    for _ in range(150):
        x = torch.randn(64, 16)
        loss = F.mse_loss(model(x), x @ wa)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model:
        if isinstance(m, LoRALinear):
            m.reset()
    for _ in range(150):
        x = torch.randn(64, 16)
        loss_b = F.mse_loss(model(x), torch.tanh(x @ wb) * 4)
        opt.zero_grad()
        loss_b.backward()
        opt.step()
    findings = _report(doc)
    assert [e["step"] for e in doc.timeline.events("backward_site")] == [1, 151]
    assert not [f for f in findings if f.code in ("TD210", "TD108")], findings


# -- td.watch and a later phase's model --------------------------------------------------------
def test_watch_and_a_later_model_of_the_same_class_trained_by_its_own_optimizer(tmp_path):
    """td.watch(net1, opt1); then net2, of the same class, trained by an optimizer not given to
    traindoctor and run without gradient each epoch. It is not followed (zero-code mode
    follows a later optimizer's models; td.watch only the ones it was given): the report says
    so (TD105 info, the optimizer not given), and net2 is no 'copy' of net1 for TD403 (it has
    gradients), nor is anything loud said of net1."""
    torch.manual_seed(0)
    w = torch.randn(8, 4)

    def make():
        return nn.Sequential(
            nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4)
        )

    net1 = make()
    opt1 = torch.optim.Adam(net1.parameters(), lr=1e-2)
    doc = td.watch(net1, opt1, out_dir=tmp_path, console=False)
    for _ in range(30):
        x = torch.randn(64, 8)
        loss = F.cross_entropy(net1(x), (x @ w).argmax(1))
        opt1.zero_grad()
        loss.backward()
        opt1.step()
    net1.eval()
    with torch.no_grad():
        net1(torch.randn(64, 8))
        net1(torch.randn(64, 8))
    net2 = make()
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.05)
    for _ in range(3):
        for _ in range(10):
            x = torch.randn(64, 8)
            loss = F.cross_entropy(net2(x), (x @ w).argmax(1))
            opt2.zero_grad()
            loss.backward()
            opt2.step()
        with torch.no_grad():
            net2(torch.randn(64, 8))
            net2(torch.randn(64, 8))
    findings = _report(doc)
    assert not _loud(findings), _loud(findings)
    assert "TD105" in [f.code for f in findings]

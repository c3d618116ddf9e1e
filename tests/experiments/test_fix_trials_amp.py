"""TD204's fix trial (experiments/fix_amp.py) and the replay's fidelity (experiments/fidelity.py):
the trials replay the run's lr per step, its autocast and a fresh GradScaler with its settings;
as written the scaled gradients are clipped (or stepped), with the fix unscale_ comes first."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor import experiments
from traindoctor.experiments import runner
from traindoctor.experiments.fidelity import StepDriver, describe
from traindoctor.experiments.fixes import Arm
from traindoctor.scenarios.numerics import td204_amp_onecycle_clip as onecycle
from traindoctor.scenarios.numerics import td204_td205_amp_scaler as td204

from .test_fix_trials import scenario


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def amp_loop(
    tmp, opt_fn, steps=30, bypass=False, sched_fn=None, scaler_kwargs=None, clip=None, lrs=None
):
    """bf16 autocast on CPU with a GradScaler; `bypass`: optimizer.step() on the scaled
    gradients; `clip`: clip_grad_norm_ at that max_norm before unscale_. Returns the doctor,
    the model, the optimizer, the scaler, the scheduler and the doctor."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4))
    opt = opt_fn(model)
    sched = sched_fn(opt) if sched_fn else None
    scaler = torch.amp.GradScaler("cpu", **(scaler_kwargs or {}))
    doc = td.watch(model, opt, scaler, out_dir=tmp, console=False)
    for i in range(steps):
        xb, yb = x[(i * 16) % 128 :][:16], y[(i * 16) % 128 :][:16]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xb), yb)
        scaler.scale(loss).backward()
        if lrs is not None:
            lrs.append(opt.param_groups[0]["lr"])  # the lr this step runs at
        if bypass:
            opt.step()  # BUG: the gradients are still scaled
        else:
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)  # BUG: still scaled
            scaler.step(opt)
            scaler.update()
        if sched is not None:
            sched.step()
        doc.log(loss=loss)
    # The last backward's gradients stay on the params (compared by the isolation test).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x[:16]), y[:16])
    scaler.scale(loss).backward()
    report = doc.close()
    return report, model, opt, scaler, sched, doc


def sgd_step_bypass(tmp):
    report, *_ = amp_loop(
        tmp, lambda m: torch.optim.SGD(m.parameters(), lr=0.05), bypass=True, steps=20
    )
    return report


CASES = [
    (scenario(td204, "amp_clip_before_unscale"), "fix helps"),
    (scenario(onecycle, "amp_onecycle_clip_before_unscale", watch=False), "fix helps"),
    (sgd_step_bypass, "fix helps"),
    # unscale_ after the first of 4 micro-batches: the other 3 add 65536x-scaled gradients, so
    # the first one's is lost in the sum; unscaled after the last, all 4 count.
    (scenario(td204, "amp_unscale_inside_accumulation"), "fix helps"),
    # The clip at 1e9 never bites, even on the scaled norm: unscaling first changes nothing.
    (scenario(onecycle, "amp_onecycle_clip_never_bites"), "fix does not help"),
    # AdamW divides the gradient by its own running size: the scale cancels (but for eps).
    (scenario(td204, "amp_step_bypasses_scaler"), "fix does not help"),
]


@pytest.mark.slow
@pytest.mark.parametrize("run, verdict", CASES, ids=[r.__name__ for r, _ in CASES])
def test_td204_trial_verdict(run, verdict, tmp_path):
    with experiments.enable():
        report = run(tmp_path)
    assert not report.internal_errors, report.internal_errors
    (finding,) = [f for f in report.findings if f.code == "TD204"]
    trial = finding.evidence["trial"]
    assert trial["verdict"] == verdict, trial.get("summary", trial)
    assert "unscale_" in trial["fix"] or "scaler.step" in trial["fix"]
    assert trial["summary"] in finding.cause
    # Replayed as the run ran: under its autocast, with a GradScaler of its settings.
    assert "autocast cpu bfloat16" in trial["replay"]
    assert "a fresh GradScaler(init_scale 65536" in trial["replay"]
    if verdict == "fix does not help":
        assert finding.priority >= 30 and "does not help" in finding.cause
    if run.__name__ == "amp_step_bypasses_scaler":
        assert "AdamW is invariant to the loss scale" in trial["note"]
    if run.__name__ == "amp_unscale_inside_accumulation":
        assert trial["accumulation"].startswith("4 micro-batches a step")
        assert "note" not in trial  # not a global scale: no scale-invariance note


@pytest.mark.slow
def test_the_schedule_is_replayed_and_said(tmp_path):
    with experiments.enable():
        report = scenario(onecycle, "amp_onecycle_clip_before_unscale")(tmp_path)
    trial = next(f for f in report.findings if f.code == "TD204").evidence["trial"]
    assert "the lr of each of the run's 40 steps (OneCycleLR), 0.008 -> 0.2 ->" in trial["replay"]
    # As written, every update is cut to a sliver: the curve does not move; with the fix it fits.
    start, end = trial["start"], trial["end"]
    assert end["as written"] > 0.95 * start["as written"]
    assert end["with fix"] < 0.2 * start["with fix"]


def test_the_capture_keeps_lr_autocast_and_scaler_settings(tmp_path):
    """What the replay reads from the run: the lr each step had (OneCycleLR), the autocast of
    the forward and the loss call, and the GradScaler's constructor settings."""
    lrs = []

    def sched(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=12)

    with experiments.enable():
        report, *_, doc = amp_loop(
            tmp_path,
            lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
            steps=12,
            sched_fn=sched,
            scaler_kwargs={"init_scale": 2.0**10, "growth_interval": 7},
            lrs=lrs,
        )
    assert not report.internal_errors, report.internal_errors
    setup = doc.probe("capture").setup
    assert [row[0] for row in setup.lrs] == pytest.approx(lrs)
    assert setup.schedulers == ["OneCycleLR"]
    assert setup.batch.autocast == ("cpu", "bfloat16") and setup.batch.loss_autocast
    assert setup.scaler == {
        "device": "cpu",
        "init_scale": 1024.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 7,
    }


def test_the_driver_sets_the_runs_lr_per_step():
    model = nn.Linear(2, 1)
    setup = runner.Setup(
        model=model,
        init_state=None,
        optimizer_class=torch.optim.SGD,
        groups=[([0, 1], {"lr": 0.1})],
        lrs=[[0.1], [0.2], [0.05]],
    )

    def lrs(arm):
        opt = runner.build_optimizer(setup, model, arm.lr_scale)
        driver = StepDriver(setup, arm, opt, None)
        out = []
        for k in range(5):
            driver.set_lr(k)
            out.append(opt.param_groups[0]["lr"])
        return out

    assert lrs(Arm()) == [0.1, 0.2, 0.05, 0.05, 0.05]  # the last held after the run's steps
    assert lrs(Arm(lr_scale=0.5)) == pytest.approx([0.05, 0.1, 0.025, 0.025, 0.025])
    # TD206/TD210's arms: one lr throughout, and the schedule said to be not replayed.
    assert lrs(Arm(lr_scale=2.0, constant_lr=True)) == [0.2] * 5
    setup.schedulers = ["OneCycleLR"]
    words = describe(setup, Arm(lr_scale=2.0, constant_lr=True), None)
    assert words.startswith("constant lr 0.2; the run's OneCycleLR not replayed")
    assert "no autocast seen" in words


def test_a_warm_up_the_run_ended_inside_goes_on_to_the_base_lr():
    """`check` stops after 20 steps, often inside a warm-up: after the recorded steps the
    replay runs at the base lr the warm-up was heading to, not at its early lr (said)."""
    model = nn.Linear(2, 1)
    setup = runner.Setup(
        model=model,
        init_state=None,
        optimizer_class=torch.optim.SGD,
        groups=[([0, 1], {"lr": 0.001, "initial_lr": 0.1})],
        lrs=[[0.001], [0.002], [0.003]],
        schedulers=["LinearLR"],
    )
    opt = runner.build_optimizer(setup, model)
    driver = StepDriver(setup, Arm(), opt, None)
    seen = []
    for k in range(5):
        driver.set_lr(k)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == [0.001, 0.002, 0.003, 0.1, 0.1]
    words = describe(setup, Arm(), None)
    assert (
        "0.001 -> 0.003; the base lr 0.1 after step 3 (the run ended inside its warm-up)" in words
    )
    # A decay (or a schedule that ended) holds its last lr.
    setup.lrs = [[0.1], [0.05], [0.01]]
    assert "the last held after step 3" in describe(setup, Arm(), None)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_lightning_bf16_mixed_with_a_step_schedule_is_replayed_so(tmp_path):
    """Lightning's precision="bf16-mixed" enters autocast around training_step, and a StepLR
    stepped every step: the TD103 trial replays both (and the added group follows the lr)."""
    L = pytest.importorskip("lightning.pytorch")
    import traindoctor.lightning as tdl

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, i):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.net[2].parameters(), lr=0.5)  # BUG: net.0 left out
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    dl = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True, generator=g
    )
    torch.manual_seed(0)
    doc = tdl.Doctor(out_dir=tmp_path, console=False)
    trainer = L.Trainer(
        callbacks=[doc],
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision="bf16-mixed",
    )
    with experiments.enable():
        trainer.fit(Lit(), dl)
    (finding,) = [f for f in doc.report.findings if f.code == "TD103"]
    trial = finding.evidence["trial"]
    assert trial["verdict"] == "fix helps", trial
    assert "(StepLR), 0.5 -> 0.0625" in trial["replay"]
    assert "autocast cpu bfloat16" in trial["replay"]


@pytest.mark.slow
def test_rediagnose_keeps_the_td204_trial(tmp_path):
    """The never-biting clip's trial (a warning, demoted) comes back the same from the
    timeline (`report --rediagnose`)."""
    from pathlib import Path

    from .test_trials_rediagnose import _rediagnosed

    with experiments.enable():
        report = scenario(onecycle, "amp_onecycle_clip_never_bites")(tmp_path)
    live, again = _rediagnosed(Path(report.run_dir))
    (finding,) = [f for f in live["findings"] if f["code"] == "TD204"]
    assert finding["severity"] == "warning"
    assert finding["evidence"]["trial"]["verdict"] == "fix does not help"
    assert again["findings"] == live["findings"]

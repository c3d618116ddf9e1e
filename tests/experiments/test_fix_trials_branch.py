"""The fix trials of a detached term (TD302) and of an op that blocks the gradient (TD301)
(experiments/fix_branch.py): the loss code written by hand after the forward is recorded on the
captured steps and replayed on a copy, as written and with the op at the finding's line
swapped; both curves and the verdict go in the finding.

Each has runs where the fix helps and runs where the cut is real but is not what holds the
loss back (a term of negligible weight: the fix does not help, and the finding ranks lower);
a stop-gradient on purpose (SimSiam's) is no finding at all; what cannot be replayed (a numpy
round-trip, a comparison, an index used to index) says why. The user's run is bit-identical
with and without the trials, in td.watch and zero-code mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor import experiments
from traindoctor.doctor import Doctor
from traindoctor.experiments.loss_code import LossRecorder, NotReplayable, Swap
from traindoctor.integrations.autopatch import attached
from traindoctor.scenarios.demo import run_scenario
from traindoctor.scenarios.loss_path import td301_argmax_selection_loss as td301_argmax
from traindoctor.scenarios.loss_path import td302_aux_loss_no_grad as td302_no_grad
from traindoctor.scenarios.loss_path import td302_aux_loss_numpy_roundtrip as td302_numpy
from traindoctor.scenarios.seeds import seed001

from .test_isolation import same, snapshot


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def data(n: int = 256, dim: int = 16, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    return x, (x @ torch.randn(dim, classes, generator=g)).argmax(1)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


class TwoHeads(nn.Module):
    """A class head and a count head (a tuple output)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.cls = nn.Linear(32, 4)
        self.count = nn.Linear(32, 1)

    def forward(self, x):
        h = self.body(x)
        return self.cls(h), self.count(h).squeeze(-1)


def script(loss_code, model_fn=mlp, steps: int = 40, lr: float = 0.1, watch=None):
    """A plain loop over 8 batches of 32, cycled; `loss_code(output, y, counts)` is the
    script's loss written by hand."""
    torch.manual_seed(0)
    x, y = data()
    counts = (x[:, :4].abs().sum(1) * 2).round()  # an integer count per example
    model = model_fn()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    doc = watch(model, opt) if watch else None
    for s in range(steps):
        i = s % 8 * 32
        opt.zero_grad()
        loss = loss_code(model(x[i : i + 32]), y[i : i + 32], counts[i : i + 32])
        loss.backward()
        opt.step()
    return doc, model, opt


def watched(tmp, loss_code, **kw):
    docs = []

    def watch(model, opt):
        docs.append(td.watch(model, opt, out_dir=tmp, console=False))
        return docs[-1]

    with experiments.enable():
        script(loss_code, watch=watch, **kw)
        return docs[-1].close()


def zero_code(tmp, loss_code, **kw):
    with experiments.enable():
        doctor = Doctor(out_dir=tmp, mode="zero-code", console=False, script="branch")
        with attached(doctor):
            script(loss_code, **kw)
        return doctor.close()


# -- the scripts' loss code ------------------------------------------------------------------


def logit_penalty_detached(out, y, _c):
    ce = F.cross_entropy(out, y)
    reg = out.detach().pow(2).mean()  # BUG: the penalty trains nothing
    return ce + 0.5 * reg


def logit_penalty_tiny(out, y, _c):
    ce = F.cross_entropy(out, y)
    reg = out.detach().pow(2).mean()  # detached, but a weight of 1e-3: it changes little
    return ce + 1e-3 * reg


def penalty_under_no_grad(out, y, _c):
    ce = F.cross_entropy(out, y)
    with torch.no_grad():
        z = torch.logsumexp(out, -1).pow(2).mean()  # BUG: no graph
    return ce + 0.2 * z


def simsiam_stop_gradient(out, y, _c):
    """A stop-gradient on purpose: the detached branch is a target inside the term."""
    ce = F.cross_entropy(out, y)
    target = out.detach().softmax(-1).roll(1, 0)
    return ce - 0.1 * F.cosine_similarity(out.softmax(-1), target, dim=-1).mean()


def hand_written_detached(out, y, _c):
    """No standard loss call at all: a squared error written by hand, plus a detached term."""
    target = F.one_hot(y, 4).float()
    return (out - target).pow(2).mean() + 0.5 * out.detach().pow(2).mean()  # BUG: detached


def count_rounded(out, y, counts, weight=0.1):
    logits, count = out
    ce = F.cross_entropy(logits, y)
    cnt = (count.round() - counts).pow(2).mean()  # BUG: round passes no gradient
    return ce + weight * cnt


def count_rounded_tiny(out, y, counts):
    return count_rounded(out, y, counts, weight=0.001)


def similarity_clamped(out, y, _c):
    target = F.one_hot(y, 4).float() * 3
    sim = -(out - target).pow(2).sum(-1)  # in (-inf, 0]; most far below -1 at the start
    return 0.05 * F.cross_entropy(out, y) + (-sim.clamp(min=-1.0)).mean()  # BUG: saturated


def count_compared(out, y, counts):
    logits, count = out
    hit = (count > counts).float()  # BUG: a comparison has no gradient
    return F.cross_entropy(logits, y) + 0.1 * hit.mean()


def _trial(report, code):
    """The finding of `code` that carries a trial (an error; a warning beside it has none)."""
    (finding,) = [f for f in report.findings if f.code == code and "trial" in f.evidence]
    return finding, finding.evidence["trial"]


# -- TD302 ------------------------------------------------------------------------------------


def test_td302_detach_removed_helps(tmp_path):
    finding, trial = _trial(watched(tmp_path, logit_penalty_detached), "TD302")
    assert trial["verdict"] == "fix helps", trial
    assert trial["fix"].startswith("the `.detach()` at ") and trial["fix"].endswith(" removed")
    written, fixed = trial["curves"]["as written"], trial["curves"]["with fix"]
    assert written[0] == fixed[0]  # the same loss at the same start
    assert trial["end"]["with fix"] < trial["end"]["as written"]
    assert "fix helps" in finding.cause or "the mean loss" in finding.cause


def test_td302_no_grad_block_zero_code(tmp_path):
    """Zero-code mode (the doctor attaches at the first backward): the no_grad block is run
    with gradients on the copy, and the fix helps."""
    _, trial = _trial(zero_code(tmp_path, penalty_under_no_grad), "TD302")
    assert trial["verdict"] == "fix helps", trial
    assert "`torch.no_grad()` block at " in trial["fix"]


def test_td302_tiny_term_does_not_help_and_ranks_lower(tmp_path):
    """The detach is real, but its term weighs 1e-3: removing it changes nothing the loss
    shows, the finding says so and loses rank."""
    finding, trial = _trial(watched(tmp_path, logit_penalty_tiny), "TD302")
    assert trial["verdict"] == "fix does not help", trial
    assert trial["steps"] == 90  # further rounds while the fix arm still learned
    assert finding.confidence <= 0.45


def test_td302_stop_gradient_on_purpose_is_silent(tmp_path):
    report = watched(tmp_path, simsiam_stop_gradient)
    assert not [f for f in report.findings if f.code in ("TD301", "TD302")]


@pytest.mark.slow
def test_td302_scenario_no_grad_helps(tmp_path):
    """The TD302 scenario (AdamW, an EMA teacher as a target beside the bug, several losses):
    its z-loss under torch.no_grad() replayed with gradients: the fix helps."""
    s = {x.name: x for x in td302_no_grad.SCENARIOS}["aux_loss_no_grad"]
    with experiments.enable():
        report = run_scenario(s, out_dir=tmp_path, watch=True)
    _, trial = _trial(report, "TD302")
    assert trial["verdict"] == "fix helps", trial


def test_td302_numpy_round_trip_not_run(tmp_path):
    s = {x.name: x for x in td302_numpy.SCENARIOS}["aux_loss_numpy_roundtrip"]
    with experiments.enable():
        report = run_scenario(s, out_dir=tmp_path, watch=True)
    _, trial = _trial(report, "TD302")
    assert trial["verdict"].startswith("not run: a numpy round-trip"), trial


def test_td302_loss_written_by_hand_is_replayed(tmp_path):
    """No standard loss call on the output: the batches are kept with their loss code only,
    and the trial runs from it (the recipe still says the loss is custom code)."""
    report = watched(tmp_path, hand_written_detached)
    _, trial = _trial(report, "TD302")
    assert trial["verdict"] in ("fix helps", "fix does not help"), trial
    assert trial["batches"] == 8


def test_td302_accumulation_not_run(tmp_path):
    """Two micro-batches a step, each loss / 2: the recorded loss code is one micro-batch's,
    not a step: said, not replayed."""
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()
    with experiments.enable(), td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for s in range(20):
            opt.zero_grad()
            for k in range(2):
                i = (2 * s + k) % 8 * 32
                out = model(x[i : i + 32])
                penalty = out.detach().pow(2).mean()  # BUG
                ((F.cross_entropy(out, y[i : i + 32]) + 0.5 * penalty) / 2).backward()
            opt.step()
    _, trial = _trial(doc.report, "TD302")
    assert trial["verdict"] == "not run: 2 micro-batches a step: the loss code of one is replayed"


@pytest.mark.slow
def test_seed001_loss_written_by_hand_detached_helps(tmp_path):
    """Seed 001 (a YOLO polygon GIoU loss written by hand: no standard loss call on the
    model's output itself): its recorded loss code is replayed, the `.detach()` removed, and
    the fix helps."""
    with experiments.enable():
        report = run_scenario(seed001.SCENARIOS[1], out_dir=tmp_path, watch=True)
    _, trial = _trial(report, "TD302")
    assert trial["verdict"] == "fix helps", trial


@pytest.mark.slow
def test_seed001_clamp_dropped_is_not_the_fix(tmp_path):
    """Seed 001's clamp(-1, 1) blocks the gradient, but dropping it is not the fix: the GIoU
    mixes units (the intersection is not normalized), and without the clamp the loss as
    written falls less than with it. The trial refutes the plausible fix."""
    with experiments.enable():
        report = run_scenario(seed001.SCENARIOS[0], out_dir=tmp_path, watch=True)
    _, trial = _trial(report, "TD301")
    assert trial["verdict"] == "fix does not help", trial


# -- TD301 ------------------------------------------------------------------------------------


def test_td301_round_straight_through_helps(tmp_path):
    _, trial = _trial(watched(tmp_path, count_rounded, model_fn=TwoHeads, lr=0.05), "TD301")
    assert trial["verdict"] == "fix helps", trial
    assert "straight-through `round`" in trial["fix"]


def test_td301_clamp_dropped_helps_scored_as_written(tmp_path):
    _, trial = _trial(watched(tmp_path, similarity_clamped), "TD301")
    assert trial["verdict"] == "fix helps", trial
    assert "dropped" in trial["fix"]
    assert trial["summary"].endswith("(both scored on the loss as written)")


def test_td301_tiny_term_does_not_help(tmp_path):
    finding, trial = _trial(
        watched(tmp_path, count_rounded_tiny, model_fn=TwoHeads, lr=0.05), "TD301"
    )
    assert trial["verdict"] == "fix does not help", trial


@pytest.mark.slow
def test_td301_scenario_argmax_penalty_does_not_help(tmp_path):
    """The TD301 scenario: a 0.05-weighted distance penalty on argmax; with the expected
    index under the softmax the loss (scored as written) ends where it does as written: the
    argmax is real, but it is not what holds this loss back."""
    s = {x.name: x for x in td301_argmax.SCENARIOS}["argmax_selection_loss"]
    with experiments.enable():
        report = run_scenario(s, out_dir=tmp_path, watch=True)
    _, trial = _trial(report, "TD301")
    assert trial["verdict"] == "fix does not help", trial
    assert "expected index under the softmax" in trial["fix"]


def test_td301_comparison_not_run(tmp_path):
    report = watched(tmp_path, count_compared, model_fn=TwoHeads, lr=0.05)
    findings = [f for f in report.findings if f.code == "TD301"]
    if not findings:
        pytest.skip("the comparison term is not reported on this run")
    verdict = findings[0].evidence["trial"]["verdict"]
    assert verdict.startswith("not run: no standard differentiable stand-in for a comparison")


# -- isolation --------------------------------------------------------------------------------


def _run(tmp, on: bool, loss_code, zero: bool, **kw):
    with experiments.enable(on):
        if zero:
            doctor = Doctor(out_dir=tmp, mode="zero-code", console=False, script="iso")
            with attached(doctor):
                _, model, opt = script(loss_code, **kw)
            doctor.close()
        else:
            docs = []

            def watch(model, opt):
                docs.append(td.watch(model, opt, out_dir=tmp, console=False))
                return docs[-1]

            _, model, opt = script(loss_code, watch=watch, **kw)
            docs[-1].close()
    snap = snapshot(model, opt, [])
    snap["next_random"] = torch.rand(4)
    return snap


@pytest.mark.parametrize("zero", [False, True], ids=["watch", "zero-code"])
@pytest.mark.parametrize(
    "loss_code,kw",
    [
        (penalty_under_no_grad, {}),
        (count_rounded, {"model_fn": TwoHeads, "lr": 0.05}),
        (hand_written_detached, {}),
    ],
    ids=["td302", "td301", "td302-by-hand"],
)
def test_trials_leave_the_run_bit_identical(tmp_path, zero, loss_code, kw):
    """Parameters, gradients, optimizer state, RNG state and the next draw are the same with
    the loss code recorded and both trials run as without the experiments."""
    off = _run(tmp_path / "off", False, loss_code, zero, **kw)
    on = _run(tmp_path / "on", True, loss_code, zero, **kw)
    same(off, on)


# -- the recorder -----------------------------------------------------------------------------


def _record(loss_code, *extra):
    torch.manual_seed(0)
    model = mlp()
    x, y = data(32)
    out = model(x)
    rec = LossRecorder()
    rec.check = True
    rec.start([out], model)
    loss = loss_code(out, y, *extra)
    return rec, loss, model, x


def test_recorder_replays_the_loss_and_swaps_only_the_line():
    rec, loss, model, x = _record(logit_penalty_detached, None)
    code = rec.finish(loss)
    assert code.verify() is None  # the recorded code gives the run's loss
    (detach,) = code.find({"detach"}, code.calls[1].source)
    swap = Swap("identity", detach.source, ("detach",))
    grads = []
    for s in (Swap(), swap):
        model.zero_grad()
        value = code.loss(model, (x,), {}, s)
        value.backward()
        grads.append(model[2].weight.grad.clone())
        assert torch.allclose(value, loss)  # the same value: only the graph differs
    assert not torch.equal(grads[0], grads[1])


def test_recorder_refuses_an_item_fed_back():
    def item_back(out, y, _c):
        scale = out.pow(2).mean().item()  # a value of the prediction, read into Python
        return F.cross_entropy(out, y) * scale

    rec, loss, *_ = _record(item_back, None)
    with pytest.raises(NotReplayable, match="reads a value of the prediction into Python"):
        rec.finish(loss)


def test_recorder_refuses_a_tensor_with_another_graph():
    other = nn.Linear(4, 4)

    def two_models(out, y, _c):
        return F.cross_entropy(out + other(out), y)

    rec, loss, *_ = _record(two_models, None)
    with pytest.raises(NotReplayable, match="neither the model's output nor its parameters"):
        rec.finish(loss)


# -- frameworks -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_lightning_detached_penalty_helps(tmp_path):
    """A LightningModule whose training_step adds a penalty on detached logits: the trial
    replays the training_step's loss code with the `.detach()` removed, and the fix helps."""
    L = pytest.importorskip("lightning.pytorch")
    import traindoctor.lightning as tdl

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, i):
            xb, yb = batch
            logits = self(xb)
            reg = logits.detach().pow(2).mean()  # BUG: the penalty trains nothing
            return F.cross_entropy(logits, yb) + 0.5 * reg

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = data()
    g = torch.Generator().manual_seed(0)
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
    )
    with experiments.enable():
        trainer.fit(Lit(), dl)
    _, trial = _trial(doc.report, "TD302")
    assert trial["verdict"] == "fix helps", trial


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        return a.round()

    @staticmethod
    def backward(ctx, g):
        return g


def test_recorder_refuses_a_custom_autograd_function():
    """Its forward's ops run without grad (as recorded), its gradient comes from a backward
    the trace does not hold: a replay would lose it."""

    def custom(out, y, _c):
        return F.cross_entropy(out, y) + _StraightThrough.apply(out).pow(2).mean()

    rec, loss, *_ = _record(custom, None)
    with pytest.raises(NotReplayable, match="custom autograd.Function"):
        rec.finish(loss)


def test_recorder_replays_autograd_grad():
    """A gradient penalty (torch.autograd.grad with create_graph) is a recorded call."""

    def penalty(out, y, _c):
        (g,) = torch.autograd.grad(out.pow(2).sum(), out, create_graph=True)
        return F.cross_entropy(out, y) + g.pow(2).mean()

    rec, loss, *_ = _record(penalty, None)
    code = rec.finish(loss)
    assert code.verify() is None
    assert "grad" in [c.name for c in code.calls]


@pytest.mark.slow
def test_rediagnose_keeps_the_td302_trial(tmp_path):
    """`report --rediagnose` gives the live findings, the TD302 trial included."""
    import json
    from pathlib import Path

    from click.testing import CliRunner

    from traindoctor.cli import cli

    report = watched(tmp_path, logit_penalty_detached)
    run_dir = Path(report.run_dir)
    live = json.loads((run_dir / "findings.json").read_text())
    result = CliRunner().invoke(cli, ["report", "--rediagnose", "--json", str(run_dir)])
    assert result.exit_code == 0, result.output
    again = json.loads((run_dir / "findings.json").read_text())
    (trial,) = [f["evidence"]["trial"] for f in live["findings"] if f["code"] == "TD302"]
    assert trial["verdict"] == "fix helps"
    assert again["findings"] == live["findings"]


def two_detaches_on_a_line(out, y, _c):
    """A stop-gradient target and a detached penalty on one line: only the penalty's detach
    is the cut (the target's stays in the fix arm)."""
    sharp = out.softmax(-1)
    return F.cross_entropy(out, y) + F.mse_loss(sharp, out.detach().softmax(-1).roll(1, 0)) + 0.5 * out.detach().pow(2).mean()  # fmt: skip  # noqa: E501


def test_td302_swaps_only_the_detach_that_feeds_the_term(tmp_path):
    from traindoctor.experiments import fix_branch, fixes

    plans = []
    original = fix_branch._reattach

    def spy(finding, setup):
        plans.append(original(finding, setup))
        return plans[-1]

    fixes.FIXES["TD302"] = spy
    try:
        report = watched(tmp_path, two_detaches_on_a_line)
    finally:
        fixes.FIXES["TD302"] = original
    _, trial = _trial(report, "TD302")
    assert trial["verdict"] == "fix helps", trial
    (plan,) = plans
    assert plan.with_fix["swap"].nth == 1, plan

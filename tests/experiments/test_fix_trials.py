"""Fix trials (issue 17, experiments/trials.py): an error finding with a declared fix is
replayed on a copy as written and with the fix, on the captured batches; both curves and the
verdict go in `evidence["trial"]`, a fix that does not help ranks the finding lower.

Each trial has a run where its fix helps and one where the finding's plausible cause is not
what holds the loss back (the fix does not help), in plain loops, zero-code mode and the
scenarios; the user's run is bit-identical with and without the trials; a trial that cannot
replay the run says why instead of guessing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor import experiments
from traindoctor.doctor import Doctor
from traindoctor.experiments import runner, trials
from traindoctor.integrations.autopatch import attached
from traindoctor.scenarios.demo import run_scenario
from traindoctor.scenarios.grad_flow import td103_td108_optimizer_params as td103
from traindoctor.scenarios.grad_flow import td105_td106_grad_accumulation as td106
from traindoctor.scenarios.grad_flow import td105_td106_hand_sgd as hand_sgd
from traindoctor.scenarios.numerics import td206_lr_too_large as td210  # TD206 and TD210
from traindoctor.scenarios.seeds import seed000
from traindoctor.scenarios.setup import td506_bce_multilabel_sigmoid as td506_bce
from traindoctor.scenarios.setup import td506_loss_double_softmax as td506_ce
from traindoctor.scenarios.setup import td506_td509_nll_loss_inputs as td506_nll

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


def mlp(*extra: nn.Module, first: nn.Module | None = None) -> nn.Sequential:
    layers = [first] if first is not None else []
    return nn.Sequential(*layers, nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4), *extra)


def loop(tmp, model, opt, steps=40, zero_grad=True, each=None, loss_fn=F.cross_entropy):
    """A plain loop over 8 batches of 32, cycled; `each(step, xb)` runs before the forward."""
    x, y = data()
    with td.watch(model, opt, out_dir=tmp, console=False) as doc:
        for s in range(steps):
            i = s % 8 * 32
            xb, yb = x[i : i + 32], y[i : i + 32]
            if each is not None:
                each(s, model, xb)
            if zero_grad:
                opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
    return doc.report


# -- the runs where the finding's plausible cause does not hold the loss back --------------


def adam_no_zero_grad(tmp):
    """No zero_grad() under Adam at a small lr: the summed gradients act as a heavy momentum,
    and the loss falls as fast as with zero_grad() (TD106 holds, its fix does not help)."""
    torch.manual_seed(0)
    model = mlp()
    return loop(tmp, model, torch.optim.Adam(model.parameters(), lr=1e-3), zero_grad=False)


def first_bias_left_out(tmp):
    """Only the first layer's bias is left out of the optimizer: adding it changes little."""
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD([model[0].weight, model[2].weight, model[2].bias], lr=0.1)
    return loop(tmp, model, opt)


def _eval_after_10(s, model, xb):
    if s == 10:
        model.eval()  # a 'validation' that never switches back


def batchnorm_on_inputs_eval(tmp):
    """BatchNorm on inputs already at zero mean and unit variance, left in eval mode: its
    running statistics (0, 1) normalize as the batch's would (TD402's fix does not help)."""
    torch.manual_seed(0)
    model = mlp(first=nn.BatchNorm1d(16))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return loop(tmp, model, opt, each=_eval_after_10)


def deep_bn(depth: int = 6) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(16 if i == 0 else 32, 32), nn.BatchNorm1d(32), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(32, 4))


def batchnorm_eval_from_the_start(tmp):
    """model.eval() after building it (a checkpoint's sanity check) and never model.train():
    a deep BatchNorm MLP on inputs in raw units (scale 10, offset 5) trains with its initial
    statistics (0, 1), i.e. without normalization; the fix helps."""
    torch.manual_seed(0)
    model = deep_bn()
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return loop(tmp, model, opt, each=_scaled)


def _scaled(s, model, xb):
    if s < 8:
        xb.mul_(10).add_(5)  # the dataset's raw units, once per example


def batchnorm_eval_after_warmup(tmp):
    """The same model left in eval mode after 10 steps: its running statistics have warmed up
    by then, and the loss on the same batches falls as well in eval mode (the fix does not
    help the training loss; its effect is the statistics of later data)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return loop(tmp, model, opt, each=_eval_after_10)


def _grow(s, model, xb):
    xb.mul_(1.6)  # 'augmentation' in place on the dataset: the inputs grow every epoch


def inputs_mutated(tmp):
    """The loss diverges because the script scales its dataset in place every epoch, not
    because of the lr: at a tenth of the lr, the same batches only train slower."""
    torch.manual_seed(0)
    model = mlp()
    return loop(tmp, model, torch.optim.SGD(model.parameters(), lr=0.05), steps=80, each=_grow)


def softmax_module_zero_code(tmp):
    """nn.Softmax as the model's last module, nn.CrossEntropyLoss on it, in zero-code mode:
    the copy drops the module."""
    doctor = Doctor(out_dir=tmp, mode="zero-code", console=False, script="softmax")
    with attached(doctor):
        torch.manual_seed(0)
        model = mlp(nn.Softmax(dim=1))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        x, y = data()
        criterion = nn.CrossEntropyLoss()
        for s in range(40):
            i = s % 8 * 32
            opt.zero_grad()
            criterion(model(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
    return doctor.close()


def scenario(module, name, watch=True):
    def run(tmp):
        s = {x.name: x for x in module.SCENARIOS}[name]
        return run_scenario(s, out_dir=tmp, watch=watch)

    run.__name__ = name
    return run


# (run, code, verdict): each trial where its fix helps, and where it does not.
CASES = [
    (scenario(td106, "zero_grad_missing", watch=False), "TD106", "fix helps"),
    (adam_no_zero_grad, "TD106", "fix does not help"),
    (scenario(td103, "optimizer_backbone_only"), "TD103", "fix helps"),
    (first_bias_left_out, "TD103", "fix does not help"),
    (scenario(seed000, "seed000_validator_eval_left"), "TD402", "fix helps"),
    (batchnorm_eval_from_the_start, "TD402", "fix helps"),
    (batchnorm_eval_after_warmup, "TD402", "fix does not help"),
    (batchnorm_on_inputs_eval, "TD402", "fix does not help"),
    (scenario(td506_bce, "bce_multilabel_sigmoid", watch=False), "TD506", "fix helps"),
    (scenario(td506_nll, "loss_nll_softmax"), "TD506", "fix helps"),
    (softmax_module_zero_code, "TD506", "fix helps"),
    # Adam rescales the flattened gradient: the logits of the model trained through the double
    # softmax fit the batches as well (only the reported loss has a floor).
    (scenario(td506_ce, "loss_double_softmax"), "TD506", "fix does not help"),
    (scenario(td210, "lr_too_large"), "TD210", "fix helps"),
    (inputs_mutated, "TD210", "fix does not help"),
    # TD206's fix is the same lr x0.1 (run once when both fire).
    (scenario(td210, "lr_too_large", watch=False), "TD206", "fix helps"),
    (inputs_mutated, "TD206", "fix does not help"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "run, code, verdict", CASES, ids=[f"{c}-{r.__name__}" for r, c, _ in CASES]
)
def test_trial_verdict(run, code, verdict, tmp_path):
    with experiments.enable():
        report = run(tmp_path)
    assert not report.internal_errors, report.internal_errors
    (finding,) = [f for f in report.findings if f.code == code]
    trial = finding.evidence["trial"]
    assert trial["verdict"] == verdict, trial.get("summary", trial)
    assert set(trial["curves"]) == {"as written", "with fix"}
    for curve in trial["curves"].values():
        assert len(curve) in (trial["steps"] + 1, trial["steps"])  # +1: after the last step
        assert curve[0] == pytest.approx(curve[0])
    assert trial["steps"] in (30, 60, 90) and 1 <= trial["batches"] <= 8
    assert trial["summary"] in finding.cause and "batches goes" in trial["summary"]
    errors = [f for f in report.findings if f.severity is finding.severity]
    if verdict == "fix does not help":
        # Ranked after the error findings whose trial did not say so.
        later = errors[errors.index(finding) + 1 :]
        assert all((f.evidence.get("trial") or {}).get("verdict") != "fix helps" for f in later)


def test_no_trial_without_the_experiments(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    report = loop(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.05), zero_grad=False)
    (finding,) = [f for f in report.findings if f.code == "TD106"]
    assert "trial" not in finding.evidence


def test_terms_written_by_hand_are_not_replayed(tmp_path):
    torch.manual_seed(0)
    model = mlp()

    def loss_fn(out, y):
        return F.cross_entropy(out, y) + 0.01 * out.pow(2).mean()

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with experiments.enable():
        report = loop(tmp_path, model, opt, steps=20, zero_grad=False, loss_fn=loss_fn)
    (finding,) = [f for f in report.findings if f.code == "TD106"]
    trial = finding.evidence["trial"]
    assert trial["verdict"].startswith("not run: the loss backpropagated"), trial
    assert trial["curves"] == {} and trial["steps"] == 0


@pytest.mark.slow
def test_updates_by_hand_are_not_replayed(tmp_path):
    s = {x.name: x for x in hand_sgd.SCENARIOS}["hand_sgd_no_zero_grad"]
    with experiments.enable():
        report = run_scenario(s, out_dir=tmp_path, watch=True)
    (finding,) = [f for f in report.findings if f.code == "TD106"]
    assert finding.evidence["trial"]["verdict"].startswith("not run: no torch optimizer")


def test_a_trial_that_raises_is_recorded_not_raised(tmp_path, monkeypatch):
    def boom(self, k):
        raise RuntimeError("planted")

    monkeypatch.setattr(trials.ArmRun, "train", boom)
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with experiments.enable():
        report = loop(tmp_path, model, opt, steps=20, zero_grad=False)
    (finding,) = [f for f in report.findings if f.code == "TD106"]
    assert finding.evidence["trial"]["verdict"] == "not run: RuntimeError: planted"
    assert not report.internal_errors


def test_two_models_are_not_replayed(tmp_path):
    torch.manual_seed(0)
    model, other = mlp(), mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data()
    with (
        experiments.enable(),
        td.watch([model, other], opt, out_dir=tmp_path, console=False) as doc,
    ):
        for s in range(20):
            i = s % 8 * 32
            F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
    (finding,) = [f for f in doc.report.findings if f.code == "TD106"]
    assert (
        finding.evidence["trial"]["verdict"]
        == "not run: 2 models watched: the experiments replay one model"
    )


def test_identical_runs_give_identical_trials(tmp_path):
    torch.manual_seed(0)
    reports = []
    for i in range(2):
        torch.manual_seed(0)
        model = mlp()
        with experiments.enable():
            reports.append(
                loop(
                    tmp_path / str(i),
                    model,
                    torch.optim.SGD(model.parameters(), lr=0.05),
                    steps=20,
                    zero_grad=False,
                )
            )
    a, b = ([f.evidence["trial"] for f in r.findings if f.code == "TD106"][0] for r in reports)
    a.pop("seconds"), b.pop("seconds")
    assert a == b


# -- the user's run is never touched --------------------------------------------------------


def buggy_script(watch=None, steps=12):
    """No zero_grad() (TD106, trial runs), BatchNorm and Dropout, a shuffled DataLoader."""
    torch.manual_seed(0)
    x, y = torch.randn(96, 16), torch.randint(0, 4, (96,))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    model = nn.Sequential(
        nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, opt) if watch else None
    seen, step = [], 0
    while step < steps:
        for xb, yb in loader:
            F.cross_entropy(model(xb), yb).backward()  # BUG: never zeroed
            opt.step()
            seen.append(yb.clone())
            step += 1
            if step >= steps:
                break
    return doc, model, opt, seen


def _watch_run(tmp, on):
    docs = []

    def watch(model, opt):
        docs.append(td.watch(model, opt, out_dir=tmp, console=False))
        return docs[-1]

    with experiments.enable(on):
        _, model, opt, seen = buggy_script(watch)
        report = docs[-1].close()
    return report, model, opt, seen


def _zero_code_run(tmp, on):
    with experiments.enable(on):
        doctor = Doctor(out_dir=tmp, mode="zero-code", console=False, script="trials-iso")
        with attached(doctor):
            _, model, opt, seen = buggy_script()
        report = doctor.close()
    return report, model, opt, seen


@pytest.mark.parametrize("runner", [_watch_run, _zero_code_run], ids=["watch", "zero-code"])
def test_user_run_is_bit_identical_with_and_without_trials(runner, tmp_path):
    snaps = {}
    for on in (False, True):
        report, model, opt, seen = runner(tmp_path / str(on), on)
        snap = snapshot(model, opt, seen)
        snap["next_random"] = torch.rand(4)  # the RNG stream goes on as it would have
        snaps[on] = (report, snap)
    same(snaps[False][1], snaps[True][1])
    report = snaps[True][0]
    assert not report.internal_errors, report.internal_errors
    (finding,) = [f for f in report.findings if f.code == "TD106"]
    assert finding.evidence["trial"]["verdict"] == "fix helps"
    assert all("trial" not in f.evidence for f in snaps[False][0].findings)


def test_memory_short_for_two_copies_is_said(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = mlp()
    # Enough free memory for the experiments' one copy (5x the model), not for a trial's two
    # (8x): the trial says so itself.
    size = runner.model_bytes(model)[0]
    free = int(size * 6.5 / runner.MEMORY_HEADROOM)
    monkeypatch.setattr(runner, "available_memory", lambda device: free)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with experiments.enable():
        report = loop(tmp_path, model, opt, steps=20, zero_grad=False)
    (finding,) = [f for f in report.findings if f.code == "TD106"]
    assert finding.evidence["trial"]["verdict"].startswith("not run: memory short on cpu: a trial")


def test_over_the_budget_is_said(tmp_path, monkeypatch):
    monkeypatch.setattr(trials, "BUDGET", 1e4)  # less than 60 steps of this 676-param MLP
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with experiments.enable():
        report = loop(tmp_path, model, opt, steps=20, zero_grad=False)
    (finding,) = [f for f in report.findings if f.code == "TD106"]
    verdict = finding.evidence["trial"]["verdict"]
    assert verdict.startswith("not run: a trial costs 60 steps of the 0.000676M-param"), verdict


# -- frameworks ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_lightning_softmax_before_cross_entropy(tmp_path):
    """A LightningModule whose training_step feeds softmax outputs to cross_entropy: the trial
    drops the softmax on the copy and the fix helps."""
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
            return F.cross_entropy(self(xb).softmax(dim=1), yb)  # probabilities, not logits

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

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
    (finding,) = [f for f in doc.report.findings if f.code == "TD506"]
    assert finding.evidence["trial"]["verdict"] == "fix helps", finding.evidence["trial"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_transformers_trainer_head_left_out(tmp_path):
    """HF Trainer with an optimizer over all but the classifier (the loss computed inside the
    model's forward): the trial adds the classifier and the fix helps."""
    transformers = pytest.importorskip("transformers")
    import traindoctor.transformers as tdt

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        max_position_embeddings=32,
    )
    model = transformers.BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (256, 12), generator=g)
    labels = ids[:, 0] % 3

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": labels[i]}

    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    opt = torch.optim.AdamW(body, lr=1e-3)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=40,
        per_device_train_batch_size=32,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    doc = tdt.Doctor(out_dir=tmp_path, console=False)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Data(), optimizers=(opt, None), callbacks=[doc]
    )
    with experiments.enable():
        trainer.train()
    (finding,) = [f for f in doc.report.findings if f.code == "TD103"]
    assert finding.evidence["trial"]["verdict"] == "fix helps", finding.evidence["trial"]


def test_the_scripts_clipping_is_replayed(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data()
    with experiments.enable(), td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for s in range(20):
            i = s % 8 * 32
            F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()  # never zeroed
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
    (finding,) = [f for f in doc.report.findings if f.code == "TD106"]
    assert finding.evidence["trial"]["clipping"] == "clip_grad_norm_(0.5)"

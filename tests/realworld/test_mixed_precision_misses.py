"""Two misses under mixed precision, found on programs written by others.

1. `td.watch(model, opt)` without `scaler=` (the one-line watch most scripts use) did not see
   the GradScaler: no TD204 for a clip before unscale_, no scale or skipped steps (TD205), the
   loss recorded times 65536, and a float16 run with a scaler reported as having none (TD211).
   The GradScaler class is now observed while such a doctor is attached (scaler_find.py).
2. Softmax fed to cross_entropy under bfloat16 autocast (Lightning `precision="bf16-mixed"`, a
   plain loop under torch.autocast) gave no TD506: a bfloat16 softmax row sums to 1 only within
   bfloat16's rounding (2^-9 measured), over the float32 tolerance.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor._patching import patched_targets
from traindoctor.findings import Severity
from traindoctor.scenarios import get


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    return x, y


def _amp_loop(watch, *, clip_first: bool, steps: int = 12, dtype=torch.bfloat16, pass_it=False):
    """A plain AMP loop on CPU; `watch(model, opt, scaler)` attaches (or not)."""
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    doc = watch(model, opt, scaler) if watch else None
    for i in range(steps):
        xb, yb = x[(i * 16) % 128 :][:16], y[(i * 16) % 128 :][:16]
        with torch.autocast("cpu", dtype=dtype):
            loss = F.cross_entropy(model(xb).float(), yb)
        scaler.scale(loss).backward()
        if clip_first:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        else:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return model, scaler, doc


def _watcher(tmp_path, pass_scaler: bool = False):
    def watch(model, opt, scaler):
        kwargs = {"scaler": scaler} if pass_scaler else {}
        return td.watch(model, opt, out_dir=tmp_path, console=False, **kwargs)

    return watch


def _codes(report, *severities):
    sev = severities or (Severity.ERROR, Severity.WARNING)
    return {f.code for f in report.findings if f.severity in sev}


# -- 1. the GradScaler of td.watch(model, opt) --------------------------------------------------
@pytest.mark.parametrize("pass_scaler", [False, True], ids=["found", "passed"])
def test_clip_before_unscale_is_found_without_scaler_argument(tmp_path, pass_scaler):
    _, _, doc = _amp_loop(_watcher(tmp_path, pass_scaler), clip_first=True)
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    assert report.findings[0].code == "TD204", [f.code for f in report.findings]
    assert report.findings[0].evidence["scale"] == 65536.0
    # The loss recorded is the loss, not the loss times the scale.
    losses = [v for _, vals in doc.timeline.series("loss.backward") for v in vals]
    assert losses and max(losses) < 10, losses[:3]
    assert doc.timeline.facts["scaler"] == "GradScaler"


def test_correct_order_without_scaler_argument_is_silent(tmp_path):
    _, _, doc = _amp_loop(_watcher(tmp_path), clip_first=False, dtype=torch.float16)
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    # float16 autocast with a scaler the script did not pass: no TD211 (no scaler) either.
    assert not _codes(report), [(f.code, f.title) for f in report.findings]
    assert [s for s, _ in doc.timeline.series("amp.scale")] == list(range(1, 13))


def test_training_and_scaler_unchanged_by_the_watch(tmp_path):
    plain, plain_scaler, _ = _amp_loop(None, clip_first=False)
    watched, scaler, doc = _amp_loop(_watcher(tmp_path), clip_first=False)
    # While attached: the scaler pickles, deep-copies and saves as without traindoctor.
    assert set(vars(scaler)) == set(vars(plain_scaler))
    assert pickle.loads(pickle.dumps(scaler)).state_dict() == scaler.state_dict()
    assert copy.deepcopy(scaler).state_dict() == plain_scaler.state_dict()
    doc.close()
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a, b)
    assert scaler.state_dict() == plain_scaler.state_dict()
    assert "scale" not in vars(scaler) and "update" not in vars(scaler)
    assert not patched_targets()
    assert "scale" in vars(torch.amp.GradScaler)  # the class's own method is back


def test_a_scaler_per_optimizer_keeps_one_step_per_iteration(tmp_path):
    """A GAN-like loop with a GradScaler per player, unscale_ then clip each: healthy, and the
    second player's scaler update() is not a step boundary of its own."""
    torch.manual_seed(0)
    x, _ = _data()
    gen, disc = nn.Linear(8, 16), nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.01)
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.01)
    scaler_d, scaler_g = torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu")
    doc = td.watch({"gen": gen, "disc": disc}, [opt_d, opt_g], out_dir=tmp_path, console=False)
    ones, zeros = torch.ones(16, 1), torch.zeros(16, 1)
    for i in range(8):
        real = x[(i * 16) % 128 :][:16]
        # The generator's scaler is the first seen scaling.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            g_loss = F.binary_cross_entropy_with_logits(disc(gen(torch.randn(16, 8))).float(), ones)
        opt_g.zero_grad()
        scaler_g.scale(g_loss).backward()
        scaler_g.unscale_(opt_g)
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        scaler_g.step(opt_g)
        scaler_g.update()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fake = gen(torch.randn(16, 8)).detach()
            d_loss = F.binary_cross_entropy_with_logits(
                disc(real).float(), ones
            ) + F.binary_cross_entropy_with_logits(disc(fake).float(), zeros)
        opt_d.zero_grad()
        scaler_d.scale(d_loss).backward()
        scaler_d.unscale_(opt_d)
        torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
        scaler_d.step(opt_d)
        scaler_d.update()
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    assert "TD204" not in {f.code for f in report.findings}
    assert doc.step == 9  # 8 iterations, one step each (the first optimizer's)
    assert doc.scaler is scaler_d  # the scaler of the first watched optimizer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("amp_clip_before_unscale", "TD204"),
        ("amp_step_bypasses_scaler", "TD204"),
        ("amp_unscale_inside_accumulation", "TD204"),
        ("amp_scaler_collapse", "TD205"),
        ("amp_healthy", None),
        ("amp_accumulation_healthy", None),
        ("amp_sqrt_safe", None),
    ],
)
def test_amp_scenarios_with_the_scaler_left_out(tmp_path, name, code):
    """The bundled AMP pairs, their scaler not handed to td.watch: the same verdicts."""
    scenario = get(name)
    docs = []

    def watch(model, opt, scaler=None):
        docs.append(td.watch(model, opt, out_dir=tmp_path, console=False))
        return docs[-1]

    scenario.train(steps=scenario.steps, watch=watch)
    report = docs[0].close()
    assert not report.internal_errors, report.internal_errors
    flagged = [f.code for f in report.findings if f.severity in (Severity.ERROR, Severity.WARNING)]
    if code is None:
        assert not flagged, flagged
    else:
        assert flagged and flagged[0] == code, flagged


# -- 2. loss inputs under autocast -------------------------------------------------------------
def _autocast_loop(tmp_path, loss_of, *, dtype=torch.bfloat16, steps: int = 6):
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for i in range(steps):
        xb, yb = x[(i * 16) % 128 :][:16], y[(i * 16) % 128 :][:16]
        with torch.autocast("cpu", dtype=dtype):
            loss = loss_of(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    assert report.steps == steps
    return report


BUGGY_UNDER_BF16 = {
    "softmax_into_cross_entropy": (lambda o, y: F.cross_entropy(o.softmax(-1), y), "TD506"),
    "softmax_cast_to_float": (lambda o, y: F.cross_entropy(o.softmax(-1).float(), y), "TD506"),
    "softmax_into_nll_loss": (lambda o, y: F.nll_loss(o.softmax(-1), y), "TD506"),
    "log_softmax_over_the_batch": (lambda o, y: F.nll_loss(o.log_softmax(0).float(), y), "TD508"),
    "bce_class_index_targets": (
        lambda o, y: F.binary_cross_entropy_with_logits(o, y[:, None].float().expand(-1, 4)),
        "TD511",
    ),
}
HEALTHY_UNDER_BF16 = {
    "logits_into_cross_entropy": lambda o, y: F.cross_entropy(o, y),
    "float_logits_into_cross_entropy": lambda o, y: F.cross_entropy(o.float(), y),
    "log_softmax_into_nll_loss": lambda o, y: F.nll_loss(o.log_softmax(-1), y),
    "float_log_softmax_into_nll_loss": lambda o, y: F.nll_loss(o.log_softmax(-1).float(), y),
}


@pytest.mark.parametrize("case", BUGGY_UNDER_BF16)
def test_loss_input_rules_see_through_bf16_autocast(tmp_path, case):
    loss_of, code = BUGGY_UNDER_BF16[case]
    assert code in _codes(_autocast_loop(tmp_path, loss_of), Severity.ERROR)


@pytest.mark.parametrize("case", HEALTHY_UNDER_BF16)
def test_healthy_losses_under_bf16_autocast_are_silent(tmp_path, case):
    report = _autocast_loop(tmp_path, HEALTHY_UNDER_BF16[case])
    assert not _codes(report), [(f.code, f.title) for f in report.findings]


def test_values_dtype_is_the_softmax_dtype_before_a_cast():
    from traindoctor.probes.loss_inputs import values_dtype

    x = torch.randn(4, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = F.softmax(F.linear(x, torch.randn(5, 3)), -1)
    assert values_dtype(probs) == "bfloat16"
    assert values_dtype(probs.float().view(-1, 5)) == "bfloat16"
    assert values_dtype(F.softmax(x, -1)) == "float32"
    assert values_dtype(F.softmax(x, -1).double()) == "float32"
    assert values_dtype(torch.zeros(3, dtype=torch.long)) is None


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "code"), [("softmax", "TD506"), ("logits", None)])
def test_lightning_bf16_mixed(tmp_path, variant, code):
    L = pytest.importorskip("lightning.pytorch")
    import logging
    import warnings

    import traindoctor.lightning as tdl

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            xb, yb = batch
            out = self.net(xb)
            return F.cross_entropy(out.softmax(-1) if variant == "softmax" else out, yb)

        def configure_optimizers(self):  # noqa: ANN201
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    cb = tdl.Doctor(out_dir=tmp_path, console=False)
    trainer = L.Trainer(
        callbacks=[cb],
        max_epochs=1,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Lit(), loader)
    assert not cb.report.internal_errors, cb.report.internal_errors
    assert cb.report.steps == 8
    flagged = _codes(cb.report)
    assert flagged == ({code} if code else set()), [(f.code, f.title) for f in cb.report.findings]


def test_a_scaler_given_to_another_doctor_is_left_to_it(tmp_path):
    first = td.watch(
        nn.Linear(4, 2),
        torch.optim.SGD(nn.Linear(4, 2).parameters(), lr=0.1),
        out_dir=tmp_path / "a",
        console=False,
    )
    _, scaler, second = _amp_loop(_watcher(tmp_path / "b", pass_scaler=True), clip_first=False)
    assert second.scaler is scaler and first.scaler is None
    second.close()
    first.close()
    assert not patched_targets()


GAN_TWO_SCALERS = """
import torch, torch.nn as nn, torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(128, 16)
gen, disc = nn.Linear(8, 16), nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))
opt_d = torch.optim.SGD(disc.parameters(), lr=0.01)
opt_g = torch.optim.SGD(gen.parameters(), lr=0.01)
scaler_d, scaler_g = torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu")
ones, zeros = torch.ones(16, 1), torch.zeros(16, 1)
for i in range(8):
    real = x[(i * 16) % 128 :][:16]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = gen(torch.randn(16, 8))
        d_loss = F.binary_cross_entropy_with_logits(disc(real).float(), ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(disc(fake.detach()).float(), zeros)
    opt_d.zero_grad()
    scaler_d.scale(d_loss).backward()
    scaler_d.step(opt_d)
    scaler_d.update()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_loss = F.binary_cross_entropy_with_logits(disc(fake).float(), ones)
    opt_g.zero_grad()
    scaler_g.scale(g_loss).backward()
    scaler_g.step(opt_g)
    scaler_g.update()
print("done")
"""


@pytest.mark.slow
def test_zero_code_a_scaler_per_optimizer_keeps_one_step_per_iteration(tmp_path_factory):
    """`traindoctor run` on a GAN with a GradScaler per player: each scaler's update() used to
    close a step (16 steps for 8 iterations); only the first optimizer's scaler does."""
    from tests.cli.conftest import run_scripts

    found = run_scripts(tmp_path_factory, {"gan": GAN_TWO_SCALERS})["gan"].findings()
    assert found["steps"] == 8, found["steps"]
    assert not found["internal_errors"], found["internal_errors"]
    assert "TD204" not in {f["code"] for f in found["findings"]}

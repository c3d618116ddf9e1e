"""Each experiment on a copy (issue 17), on the scenarios of scenarios/experiments/: where it
confirms a real cause and where it refutes a plausible wrong one, in td.watch and zero-code
mode, with the experiments on (as under `traindoctor check`). A healthy twin gets the passing
verdicts, and no TD7xx finding above info; a buggy one its TD7xx warnings where the evidence is
decisive (TD702: no better than a constant prediction; TD704: a mix that cannot be a design)."""

from __future__ import annotations

import pytest
import torch

from traindoctor import experiments
from traindoctor.findings import Severity
from traindoctor.scenarios.demo import run_scenario
from traindoctor.scenarios.experiments import (
    td701_init_loss,
    td702_overfit_one_batch,
    td703_input_ignored,
    td704_batch_mixing,
    td706_lr_probe,
)

BY_NAME = {
    s.name: s
    for m in (
        td701_init_loss,
        td702_overfit_one_batch,
        td703_input_ignored,
        td704_batch_mixing,
        td706_lr_probe,
    )
    for s in m.SCENARIOS
}
# scenario -> {experiment: expected verdict}
EXPECT = {
    # TD701: confirms a bad init; refutes "the init is bad" for a summed loss that looks huge.
    "exp_init_logits_too_large": {"init_loss": "too_high"},
    "exp_init_sum_reduction": {"init_loss": "ok"},
    "exp_init_default": {"init_loss": "ok", "overfit_one_batch": "ok"},
    # TD702: the lr looks too high, but no lr fits one batch: the loss broadcasts (refutes the
    # lr); a too low lr: fits only at x10 (confirms the lr).
    "exp_overfit_broadcast_not_lr": {
        "overfit_one_batch": "failed",
        "input_independent": "inconclusive",
        "lr_probe": "not_the_lr",
    },
    "exp_overfit_lr_too_low": {"overfit_one_batch": "ok"},
    "exp_overfit_healthy": {"overfit_one_batch": "ok", "lr_probe": "fits_as_written"},
    # TD703: confirms a forward that ignores its input; refutes it for noisy labels.
    "exp_input_per_sample_norm": {
        "input_independent": "ignores_input",
        "overfit_one_batch": "failed",
    },
    "exp_input_noisy_labels": {"input_independent": "ok", "overfit_one_batch": "ok"},
    "exp_input_healthy": {"input_independent": "ok"},
    # TD704: confirms batch mixing and names the op; refutes BatchNorm as the mixer.
    "exp_batch_lstm_not_batch_first": {"batch_independence": "mixes"},
    "exp_batch_log_softmax_dim0": {"batch_independence": "mixes"},
    "exp_batch_batchnorm_is_fine": {"batch_independence": "independent"},
    "exp_batch_independent": {"batch_independence": "independent"},
    # TD706: confirms an lr too high (blows up at x1, fits at x0.1); the refutation is
    # exp_overfit_broadcast_not_lr above ("not the lr").
    "exp_lr_probe_too_high": {"lr_probe": "too_high", "overfit_one_batch": "ok"},
    "exp_lr_probe_healthy": {"lr_probe": "fits_as_written"},
}
# TD7xx findings above info, by scenario (every other TD7xx finding is info).
WARNS = {
    "exp_overfit_broadcast_not_lr": {"TD702"},
    "exp_input_per_sample_norm": {"TD702"},
    "exp_batch_lstm_not_batch_first": {"TD704"},
    "exp_batch_log_softmax_dim0": {"TD704"},
}
MIXER = {
    "exp_batch_lstm_not_batch_first": ("RnnLayerBackward", "td704_batch_mixing.py:30"),
    "exp_batch_log_softmax_dim0": ("LogSoftmaxBackward0", "td704_batch_mixing.py:45"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("watch", [True, False], ids=["watch", "zero-code"])
@pytest.mark.parametrize("name", list(EXPECT))
def test_experiment_verdicts(name, watch, tmp_path):
    scenario = BY_NAME[name]
    with experiments.enable():
        report = run_scenario(scenario, out_dir=tmp_path, watch=watch)
    assert not report.internal_errors, report.internal_errors
    events = {e["name"]: e for e in report.timeline.events("experiment")}
    got = {k: events[k]["verdict"] for k in EXPECT[name]}
    assert got == EXPECT[name], {k: events[k] for k in EXPECT[name]}
    for code in scenario.expect:
        assert any(f.code == code for f in report.findings), code
    seven = [f for f in report.findings if f.code.startswith("TD7")]
    warned = {f.code for f in seven if f.severity is not Severity.INFO}
    assert warned == WARNS.get(name, set()), [(f.code, f.severity, f.title) for f in seven]
    assert all(f.severity in (Severity.INFO, Severity.WARNING) for f in seven)
    if name in MIXER:
        op, line = MIXER[name]
        facts = events["batch_independence"]["facts"]
        assert op in facts["op"] and facts["op_source"].endswith(line), facts
    if name == "exp_overfit_lr_too_low":
        assert events["overfit_one_batch"]["facts"]["fit_at_lr_scale"] == 10.0
    if name == "exp_overfit_broadcast_not_lr":
        assert set(events["overfit_one_batch"]["curves"]) == {"lr x1", "lr x10", "lr x0.1"}
        probe = next(f for f in report.findings if f.code == "TD706")
        assert probe.title.startswith("The lr is not the cause: no lr fits one batch"), probe.title
    if name == "exp_lr_probe_too_high":
        probe = next(f for f in report.findings if f.code == "TD706")
        assert probe.title.startswith("The lr is the cause (too high): on one batch, at lr x0.1")
        assert probe.evidence["better_lr_scale"] == 0.1 and "lr x1" in probe.evidence["blew_up"]
        assert "lower the lr about 10x (to 0.05)" in probe.fix
    if name in ("exp_lr_probe_healthy", "exp_overfit_healthy", "exp_init_default"):
        assert not any(f.code == "TD706" for f in report.findings)  # nothing to conclude

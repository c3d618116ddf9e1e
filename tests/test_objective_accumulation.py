"""A logged loss that adds up the step's micro-batches (the Hugging Face Trainer at gradient
accumulation 2 logs twice the loss of one pass) is compared with the standard losses like with
like: it is no hand-written term, so a far too high lr there is still judged by TD210 (the miss
of ecosystem `hf-run-mlm::lr-x1000`). A real extra term beside the standard loss keeps the
objective "mixed" whatever the logging, and a healthy falling loss stays silent."""

from __future__ import annotations

import pytest

from tests.rules._loss_inputs_tl import SUPERVISED_CE
from traindoctor.findings import Severity
from traindoctor.rules._objective import objective
from traindoctor.testing import assert_fires, assert_silent, make_timeline

LOG_EVERY = 5


def _tl(passes, *, standard_share=1.0, logged="sum"):
    """One step per entry of `passes` (the losses of its two backward passes). The standard
    loss is `standard_share` of each pass (the rest a hand-written term); every 5th step logs
    the mean over the steps since the last log of each step's sum (or mean) of its passes."""
    steps, window = {}, []
    for i, (a, b) in enumerate(passes, 1):
        s = steps[i] = {"loss.backward": [a, b], "optim.lr": {"opt0/group0": 1.0}}
        window.append(a + b if logged == "sum" else (a + b) / 2)
        if i % LOG_EVERY == 0:
            s["loss.train"] = [sum(window) / len(window)]
            window = []
        if i <= 3 or i % 10 == 0:  # sampled steps: the last pass's loss call is kept
            s["loss_inputs.observed"] = [0]
            s["loss_inputs.stats"] = {"0.loss": standard_share * b, "0.t_min": 0.0, "0.t_max": 2.0}
    return make_timeline(params=["fc.weight"], steps=steps, events=[SUPERVISED_CE])


def _diverging():
    """3.6 before any update, up to ~180 within ten steps, ending near 30: a far too high lr."""
    up = [3.6, 25, 50, 180, 90, 110, 145, 180, 185, 160, 155, 170, 200, 210, 200]
    down = [190 - 4.5 * i for i in range(36)]
    values = up + down
    return [(v, v * (0.96 if i % 2 else 1.04)) for i, v in enumerate(values)]


def test_a_logged_sum_over_micro_batches_is_the_supervised_loss():
    obj = objective(_tl(_diverging()).view())
    assert obj.falls is True and obj.kind == "supervised", obj
    assert "adds up each step's backward passes" in obj.judged


def test_a_far_too_high_lr_under_accumulation_is_a_divergence():
    f = assert_fires("TD210", _tl(_diverging()))
    assert f.severity is Severity.ERROR and f.evidence["kind"] == "divergence"
    # the start is the first step's passes summed, on the logged loss's scale
    assert abs(f.evidence["loss_before"] - (3.6 + 3.6 * 1.04)) < 1e-9


def test_a_hand_written_term_beside_the_standard_loss_stays_mixed():
    # the cross-entropy is half of each pass (a KL term of its size beside it): the logged
    # sum over 2 passes is then 4x it, and per pass 2x: neither comparison holds
    tl = _tl(_diverging(), standard_share=0.5)
    obj = objective(tl.view())
    assert obj.kind == "mixed" and obj.falls is None, obj
    # logged as the mean of the passes: the same
    obj = objective(_tl(_diverging(), standard_share=0.5, logged="mean").view())
    assert obj.kind == "mixed", obj


def test_a_healthy_run_logged_as_a_sum_is_silent():
    tl = _tl(_falling())
    assert objective(tl.view()).kind == "supervised"
    assert_silent("TD210", tl)
    assert_silent("TD108", tl)


# -- a plain loop that logs each step's micro-batch losses added up --------------------------
def _plain_accumulation(tmp_path, lr: float, steps: int = 60):
    """Two micro-batches per step, each loss backpropagated as is, the step's losses added up
    for the log (as the Hugging Face Trainer does)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import traindoctor as td

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    y = (x @ torch.randn(20, 5, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for step in range(steps):
        total = 0.0
        for micro in range(2):
            i = (step * 2 + micro) * 16 % 512
            logits = model(x[i : i + 16])
            loss = F.cross_entropy(logits, y[i : i + 16])
            loss.backward()
            total += loss.item()
        opt.step()
        opt.zero_grad()
        doc.log(loss=total)
    return doc.close(), doc


@pytest.mark.slow
def test_plain_loop_logging_the_sum_is_judged_as_supervised(tmp_path):
    import torch

    torch.set_num_threads(1)
    report, doc = _plain_accumulation(tmp_path / "high", lr=1.0)
    loud = {f.code: f for f in report.findings if f.severity is not Severity.INFO}
    assert "TD210" in loud or "TD108" in loud, [(f.code, f.title) for f in report.findings]
    judged = (loud.get("TD210") or loud.get("TD108")).evidence["judged"]
    assert judged.startswith("supervised") and "adds up each step's backward passes" in judged
    healthy, _ = _plain_accumulation(tmp_path / "ok", lr=3e-3)
    assert [f.code for f in healthy.findings if f.severity is not Severity.INFO] == []


@pytest.mark.parametrize("every", [1, 7, 50])
@pytest.mark.parametrize("code", ["TD210", "TD108"])
def test_incremental_passes_agree_with_a_fresh_pass(code, every):
    from tests.test_incremental_rules import _fresh, _replay

    for tl in (_tl(_diverging()), _tl(_diverging(), standard_share=0.5), _tl(_falling())):
        assert _replay(tl, code, every) == _fresh(tl, code)


def _falling():
    return [(3.6 * 0.97**i, 3.5 * 0.97**i) for i in range(60)]

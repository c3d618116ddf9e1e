"""TD105 on backward passes that evaluate a trained model with gradients.

pytorch/tutorials' `fgsm_tutorial.py` (and every adversarial-robustness notebook after it)
trains or loads a model, calls `model.eval()`, then for each test image sets
`data.requires_grad = True`, runs `loss.backward()` and reads `data.grad`: hundreds of
backward passes and no optimizer step, on purpose. EWC (Kirkpatrick et al.; e.g.
moskomule/ewc.pytorch) estimates the Fisher information the same way, in eval mode, reading
each param's `.grad`. Before: TD105 error, "optimizer.step() stopped being called ... the call
sits under a condition that was true only at the start". Now an info naming what was measured
(eval mode; a leaf that requires grad and is no parameter). Twin: the optimizer step lost in
the middle of training (train mode, params only) stays the error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests._loop import watch


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _train(model, opt, x, y, steps=6):
    for i in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x[i * 8 : i * 8 + 8]), y[i * 8 : i * 8 + 8]).backward()
        opt.step()


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 8, 8, generator=g)
    return x, (x.mean((1, 2, 3)) > 0).long() + (x[:, :, :4].mean((1, 2, 3)) > 0).long()


def _td105(doc):
    return [f for f in doc.findings if f.code == "TD105"]


def test_fgsm_after_training_is_an_info(tmp_path):
    model, (x, y) = _net(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, opt, tmp_path)
    _train(model, opt, x, y)
    model.eval()
    for k in range(20):
        data = x[k : k + 1].clone()
        data.requires_grad = True
        loss = F.cross_entropy(model(data), y[k : k + 1])
        model.zero_grad()
        loss.backward()
        (data + 0.1 * data.grad.sign()).clamp(-3, 3)
    doc.close()
    (f,) = _td105(doc)
    assert f.severity.value == "info", f.title
    assert "evaluation" in f.title
    assert f.evidence["input_grads"][0] == 1


def test_fisher_estimate_in_eval_mode_is_an_info(tmp_path):
    model, (x, y) = _net(), _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    doc = watch(model, opt, tmp_path)
    _train(model, opt, x, y)
    model.eval()
    fisher = [torch.zeros_like(p) for p in model.parameters()]
    for k in range(20):
        model.zero_grad()
        F.nll_loss(F.log_softmax(model(x[k : k + 1]), 1), y[k : k + 1]).backward()
        for f, p in zip(fisher, model.parameters()):
            f += p.grad.detach() ** 2 / 20
    doc.close()
    (f,) = _td105(doc)
    assert f.severity.value == "info", f.title
    assert f.evidence["models_training"][0] is False


def test_a_step_lost_mid_training_stays_an_error(tmp_path):
    model, (x, y) = _net(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, opt, tmp_path)
    _train(model, opt, x, y)
    for k in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x[k : k + 8]), y[k : k + 8]).backward()
    doc.close()
    (f,) = _td105(doc)
    assert f.severity.value == "error", f.title
    assert "stopped being called" in f.cause


def test_inputs_requiring_grad_in_train_mode_with_no_step_ever_stay_an_error(tmp_path):
    """ecosystem maml-sinusoid::optimizer-step-removed: the loop sets requires_grad on its
    inputs (train.py's x_tr.requires_grad_(True)) and its meta-optimizer never steps; read as
    a gradient evaluation (info) after b9784e0, TD105:E before it and now."""
    model, (x, y) = _net(), _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    doc = watch(model, opt, tmp_path)
    for k in range(20):
        data = x[k : k + 8].clone().requires_grad_(True)
        opt.zero_grad()
        F.cross_entropy(model(data), y[k : k + 8]).backward()
    doc.close()
    (f,) = _td105(doc)
    assert f.severity.value == "error", f.title

"""TD402 for a model that drops out through F.dropout(x, p, training=self.training).

pytorch/examples' GAT holds no Dropout module: its layers call the functional dropout with
their own mode. When the training step stops calling model.train() while the evaluation after
each step calls model.eval(), dropout is off from the second step on; no mode-sensitive module
said so. The F.dropout calls of the training forwards now do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests._loop import assert_bit_identical, params_of, watch


class FunctionalDropoutNet(nn.Module):
    def __init__(self, train_arg: str = "mode") -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)
        self.train_arg = train_arg

    def forward(self, x):
        training = self.training if self.train_arg == "mode" else False
        h = F.elu(self.a(F.dropout(x, 0.6, training=training)))
        return F.log_softmax(self.b(F.dropout(h, 0.6, training=training)), dim=1)


def _run(tmp_path, *, restore: bool, train_arg: str = "mode", steps: int = 30):
    torch.manual_seed(0)
    x = torch.randn(200, 16)
    y = x[:, :4].argmax(1)
    model = FunctionalDropoutNet(train_arg)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    doc = watch(model, opt, tmp_path) if tmp_path is not None else None
    for _ in range(steps):
        if restore:
            model.train()
        opt.zero_grad()
        F.nll_loss(model(x), y).backward()
        opt.step()
        model.eval()  # evaluation after each step, as GAT's test()
        with torch.no_grad():
            model(x)
    if doc is not None:
        doc.close()
    return doc, params_of(model)


def _loud(doc):
    return [f.code for f in doc.report.findings if f.severity.value in ("error", "warning")]


def test_functional_dropout_turned_off_by_eval_mode_is_td402(tmp_path):
    doc, _ = _run(tmp_path, restore=False)
    f = doc.report.get("TD402")
    assert f is not None and f.severity.value == "error"
    assert f.step == 2 and f.evidence["on_at_step"] == 1
    line = next(
        i
        for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if "h = F.elu(self.a(F.dropout(" in text
    )
    assert f.evidence["functional_dropout"].endswith(f"test_functional_dropout.py:{line}")
    assert "functional dropout" in f.title


def test_train_mode_restored_each_step_is_silent(tmp_path):
    doc, _ = _run(tmp_path, restore=True)
    assert "TD402" not in _loud(doc)


def test_dropout_switched_off_by_hand_is_not_a_mode_fault(tmp_path):
    # training=False written in the call: never on, nothing was turned off by a mode
    doc, _ = _run(tmp_path, restore=False, train_arg="off")
    assert "TD402" not in _loud(doc)


def test_weights_identical_and_f_dropout_restored(tmp_path):
    original = F.dropout
    _, plain = _run(None, restore=False, steps=10)
    _, watched = _run(tmp_path, restore=False, steps=10)
    assert_bit_identical(plain, watched)
    assert F.dropout is original


class _Scriptable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return F.dropout(self.fc(x), 0.1, training=self.training)


def test_torch_jit_script_works_the_same_while_f_dropout_is_wrapped(tmp_path):
    """torch.jit.script of a module (or a function) calling F.dropout while a doctor holds the
    wrapper: it compiled the wrapper's *args source and failed. A scripted module compiles the
    original (its saved code names torch.nn.functional.dropout only); a scripted function
    compiles the wrapper, whose signature is F.dropout's."""
    torch.manual_seed(0)
    plain = torch.jit.script(_Scriptable()).code
    model = _Scriptable()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, opt, tmp_path)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    scripted = torch.jit.script(_Scriptable())
    assert scripted.code == plain and "traindoctor" not in scripted.code
    fn = torch.jit.script(lambda_free_dropout)
    assert fn(torch.ones(3)).shape == (3,)
    doc.close()
    x = torch.randn(2, 4)
    scripted.eval()
    assert torch.equal(scripted(x), scripted.fc(x))


def lambda_free_dropout(x: torch.Tensor) -> torch.Tensor:
    return F.dropout(x, 0.5, training=False)


class DefaultFlagNet(FunctionalDropoutNet):
    """F.dropout with `training` left at its default (True): on in eval mode too
    (rixwew/pytorch-fm#21); `always=True` writes training=True, on purpose (Tacotron 2)."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.always = always

    def forward(self, x):
        if self.always:
            h = F.elu(self.a(F.dropout(x, 0.5, training=True)))
        else:
            h = F.elu(self.a(F.dropout(x, 0.5)))
        return F.log_softmax(self.b(h), dim=1)


def _validate_each_step(tmp_path, model):
    torch.manual_seed(0)
    x = torch.randn(200, 16)
    y = x[:, :4].argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    doc = watch(model, opt, tmp_path)
    for _ in range(6):
        model.train()
        opt.zero_grad()
        F.nll_loss(model(x), y).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, 200, 50):
                model(x[i : i + 50])
    doc.close()
    return doc


def test_functional_dropout_at_its_default_in_validation_is_td403(tmp_path):
    f = _validate_each_step(tmp_path, DefaultFlagNet()).report.get("TD403")
    assert f is not None and f.severity.value == "warning"
    assert f.evidence["functional_dropout"]["default"] is True
    assert "test_functional_dropout.py:" in f.where.source
    doc = _validate_each_step(tmp_path / "always", DefaultFlagNet(always=True))
    assert doc.report.get("TD403") is None  # training=True written: on purpose


class ExplicitFlagNet(FunctionalDropoutNet):
    """`training` passed in ways a one-line text search missed: Monte-Carlo dropout with the
    keyword on the call's second line, the flag as the third positional argument, or a flag
    computed by the model (review of eba0c0b)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.mc = True

    def forward(self, x):
        if self.how == "multiline":
            d = F.dropout(
                x,
                0.5,
                training=True,  # Monte-Carlo dropout at validation, on purpose
            )
        elif self.how == "positional":
            d = F.dropout(x, 0.5, True)
        else:
            d = F.dropout(x, 0.5, training=self.training or self.mc)
        h = F.elu(self.a(d))
        return F.log_softmax(self.b(h), dim=1)


@pytest.mark.parametrize("how", ["multiline", "positional", "computed"])
def test_functional_dropout_with_training_passed_is_not_td403(how, tmp_path):
    assert _validate_each_step(tmp_path, ExplicitFlagNet(how)).report.get("TD403") is None


def test_the_default_is_read_from_the_whole_call_over_several_lines(tmp_path):
    class MultiLineDefault(FunctionalDropoutNet):
        def forward(self, x):
            d = F.dropout(
                x,
                p=0.5,
            )
            return F.log_softmax(self.b(F.elu(self.a(d))), dim=1)

    f = _validate_each_step(tmp_path, MultiLineDefault()).report.get("TD403")
    assert f is not None and f.evidence["functional_dropout"]["default"] is True

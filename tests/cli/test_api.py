"""Bad input to the Python API raises traindoctor.UsageError with one line saying what to pass."""

from __future__ import annotations

import pytest
import torch

import traindoctor as td


def _model_and_opt():
    model = torch.nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _empty_optimizer():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    opt.param_groups[0]["params"].clear()
    return opt


def _assert_usage(excinfo, *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    assert "pass" in msg, msg
    for needle in needles:
        assert needle in msg, msg


@pytest.fixture
def doc(tmp_path):
    model, opt = _model_and_opt()
    d = td.watch(model, opt, out_dir=tmp_path, console=False)
    yield d
    d.close()


@pytest.mark.parametrize(
    ("make_args", "kwargs", "needles"),
    [
        (lambda m, o: (None, o), {}, ("model",)),
        (lambda m, o: (m, _empty_optimizer()), {}, ("no parameters", "model.parameters()")),
        (lambda m, o: ("model", o), {}, ("nn.Module",)),
        (lambda m, o: (m, [o, 3]), {}, ("optimizer",)),
        (lambda m, o: (m, o), {"budget": "x"}, ("budget",)),
        (lambda m, o: (m, o), {"budget": 0}, ("budget",)),
        (lambda m, o: (m, o), {"scaler": 3}, ("GradScaler",)),
    ],
)
def test_watch_rejects_bad_input(tmp_path, make_args, kwargs, needles):
    model, opt = _model_and_opt()
    with pytest.raises(td.UsageError) as excinfo:
        td.watch(*make_args(model, opt), out_dir=tmp_path, console=False, **kwargs)
    _assert_usage(excinfo, *needles)
    assert not tmp_path.joinpath("traindoctor-runs").exists()


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"loss": "x"}, ("loss", "tensor")),
        ({"parts": [1]}, ("parts", "dict")),
        ({"parts": {"box": "x"}}, ("box", "tensor")),
        ({"loss": True}, ("loss",)),
        ({"acc": object()}, ("acc",)),
    ],
)
def test_log_rejects_bad_input(doc, kwargs, needles):
    with pytest.raises(td.UsageError) as excinfo:
        doc.log(**kwargs)
    _assert_usage(excinfo, *needles)


def test_usage_error_is_a_value_error():
    assert issubclass(td.UsageError, ValueError)

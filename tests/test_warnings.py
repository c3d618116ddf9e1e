"""torch's own warnings still name the user's line when they pass through our wrappers."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td


def _setup(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, td.watch(model, opt, out_dir=tmp_path, console=False)


def _shown(record):
    return [(w.filename, w.lineno, str(w.message)[:30]) for w in record]


def test_broadcast_warning_names_each_user_line_once(tmp_path):
    model, opt, doc = _setup(tmp_path)
    x, y = torch.randn(8, 4), torch.randn(8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        for _ in range(3):
            loss = F.mse_loss(model(x), y)  # line A: (8, 1) against (8,)
            loss.backward()
            opt.step()
            opt.zero_grad()
        F.mse_loss(model(x), y)  # line B: a second call site gets its own warning
    doc.close()
    broadcast = [w for w in record if "target size" in str(w.message)]
    assert [w.filename for w in broadcast] == [__file__, __file__]
    assert broadcast[0].lineno != broadcast[1].lineno
    assert "traindoctor" not in " ".join(w.filename for w in record)


def test_scheduler_order_warning_names_the_user_line(tmp_path):
    model, opt, doc = _setup(tmp_path)
    sched = torch.optim.lr_scheduler.StepLR(opt, 5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model(torch.randn(2, 4)).sum().backward()
        sched.step()  # before optimizer.step(): torch warns
        opt.step()
    doc.close()
    order = [w for w in record if "lr_scheduler.step()" in str(w.message)]
    assert len(order) == 1, _shown(record)
    assert order[0].filename == __file__


def test_user_filters_still_apply(tmp_path):
    model, opt, doc = _setup(tmp_path)
    x, y = torch.randn(8, 4), torch.randn(8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("ignore")
        F.mse_loss(model(x), y)
    assert record == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="target size"):
            F.mse_loss(model(x), y)
    doc.close()

"""The numerics probe: the autopsy finds the first non-finite value and never touches the
user's model, gradients, optimizer or RNG (parameters bit-identical with and without it)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from tests._loop import assert_bit_identical, assert_detached, params_of, watch
from traindoctor.probes.numerics import _finite_values, _read_with_values, loss_graph_culprits

torch.set_num_threads(1)


class LogNet(nn.Module):
    """Dropout (uses the RNG) and a log that hits 0 at step 3 for the batch's first row."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.drop(self.fc(x)).relu() + x[:, :1].abs())


def _run(steps: int, doc_factory=None):
    torch.manual_seed(0)
    model = LogNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    doc = doc_factory(model, opt) if doc_factory else None
    g = torch.Generator().manual_seed(3)
    grads, rng_after = [], []
    for step in range(1, steps + 1):
        x = torch.randn(8, 4, generator=g)
        if step == 3:
            x[0] = 0.0  # log(relu(fc(0)) + 0) can be log(0) = -inf
            with torch.no_grad():
                model.fc.bias.fill_(-1.0)
        opt.zero_grad(set_to_none=False)
        loss = model(x).mean()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        rng_after.append(torch.get_rng_state().clone())
    return model, opt, doc, grads, rng_after


def test_autopsy_finds_the_log_and_changes_nothing(tmp_path):
    plain_model, _, _, plain_grads, plain_rng = _run(5)
    model, opt, doc, grads, rng = _run(5, lambda m, o: watch(m, o, tmp_path))
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    assert_bit_identical(params_of(plain_model), params_of(model))
    for a, b in zip(plain_grads, grads):
        assert_bit_identical(a, b)
    for a, b in zip(plain_rng, rng):
        assert torch.equal(a, b)
    assert_detached(model, opt)
    events = report.timeline.events("nonfinite")
    assert events and events[0]["step"] == 3
    e = events[0]
    assert e["first"] == "activation" and e["module"] == "<model>"
    lines, start = inspect.getsourcelines(LogNet.forward)
    line = start + next(i for i, t in enumerate(lines) if "torch.log" in t)
    assert e["op"] == "log" and e["source"].endswith(f"test_numerics.py:{line}")
    top = report.findings[0]
    assert top.code == "TD203" and top.where.op == "log"


def test_healthy_run_records_checks_and_no_event(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    doc = watch(model, opt, tmp_path)
    for _ in range(12):
        opt.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    report = doc.close()
    assert not report.timeline.events("nonfinite")
    assert not report.timeline.events("nonfinite_masked")
    checked = dict(report.timeline.series("numerics.checked"))
    assert checked[1] == {"loss": 1, "grads": 1, "activations": 1}
    assert all(c.get("loss") == 1 for c in checked.values())


def test_loss_graph_culprits_recompute_from_saved_tensors():
    p = torch.tensor([0.5, 0.0, 0.2], requires_grad=True)
    loss = -(torch.log(p) + torch.sqrt(p + 1)).mean()
    found = loss_graph_culprits(loss)
    assert [c["op"] for c in found] == ["log"]
    assert found[0]["measured"] and abs(found[0]["fraction"] - 1 / 3) < 1e-6


def _user_modes() -> int:
    """Torch-function modes on the stack, not counting traindoctor's cut tracker (it sits at
    the bottom of the stack, between forward and backward, on walk steps only)."""
    from traindoctor.probes.cuts import CutTracker

    stack = [
        torch._C._get_function_stack_at(i) for i in range(torch._C._len_torch_function_stack())
    ]
    return sum(not isinstance(m, CutTracker) for m in stack)


def test_loss_window_leaves_modes_and_anomaly_flags_as_the_user_has_them(tmp_path):
    # The loss-line window spans user code between forward and backward: a user mode entered
    # around the forward only (torch.device) must come and go as in an unwatched run.
    import traindoctor as td

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    depths = []
    with td.watch(model, opt, out_dir=tmp_path, console=False):
        for _ in range(6):
            opt.zero_grad()
            with torch.device("cpu"):
                out = model(torch.randn(5, 4))
            loss = torch.log(out.pow(2).sum() + 1)
            depths.append(_user_modes())
            loss.backward()
            opt.step()
            assert not torch.is_anomaly_enabled()
    assert depths == [0] * 6
    assert torch._C._len_torch_function_stack() == 0
    assert not torch.is_anomaly_enabled()


def test_nan_made_by_the_parents_own_code_names_that_op_and_line(tmp_path):
    # The NaN is made in the root's forward between two submodules: the finding names the
    # root's op and line, not the innocent submodule that received the values.
    import traindoctor as td

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            h = self.l1(x)
            h = torch.log(h - h)  # -inf everywhere: made here, in the root's own code
            return self.l2(h)

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
    f = doc.report.get("TD203")
    assert f is not None
    assert f.where.module == "<model>"
    assert f.where.op == "log"
    assert f.where.source and f.where.source.endswith(
        f"test_numerics.py:{_line_of('made here, in the root')}"
    )


def _line_of(marker: str) -> int:
    import inspect

    lines = inspect.getsource(inspect.getmodule(_line_of)).splitlines()
    return next(i for i, text in enumerate(lines, 1) if marker in text and "_line_of" not in text)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.complex64])
def test_module_output_values_are_finite_exactly_when_the_output_is(dtype):
    cases = [
        torch.randn(3, 4),
        torch.tensor([1.0, float("nan")]),
        torch.tensor([2.0, -float("inf")]),
    ]
    cases += [torch.tensor([float("inf"), 0.0]), torch.tensor(5.0), torch.full((2000,), 3e4)]
    for t in cases:
        x = t.to(dtype)
        values: list[torch.Tensor] = []
        _finite_values((x, torch.arange(3), torch.empty(0)), values)
        flags, finite = _read_with_values([torch.tensor(True), False], values)
        assert flags == [True, False]
        assert len(values) == 2  # one tensor checked: its min and max
        assert all(finite) == bool(torch.isfinite(x).all()), (dtype, t)

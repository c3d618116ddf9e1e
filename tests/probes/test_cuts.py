"""The cut tracker (probes/cuts.py): which cuts reach the loss, on real torch code; the mode
stack left as it was; nothing changes in the training; off on unsampled steps."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from tests._loop import assert_bit_identical, params_of, watch
from traindoctor.gradpath import Walk
from traindoctor.probes import cuts as cuts_mod
from traindoctor.probes import gradpath as gradpath_mod
from traindoctor.probes.cuts import CutTracker
from traindoctor.scenarios import get
from traindoctor.scenarios._base import line_in
from traindoctor.scenarios.demo import run_scenario


def _here(offset: int = 0) -> str:
    """`test_cuts.py:LINE` of the caller's line plus `offset`."""
    return f"test_cuts.py:{inspect.currentframe().f_back.f_lineno + offset}"


def _line_here(marker: str) -> str:
    lines = inspect.getsource(inspect.getmodule(_line_here)).splitlines()
    return f"test_cuts.py:{next(i for i, t in enumerate(lines, 1) if marker in t)}"


def _model_out() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    return lin(torch.randn(8, 6)), torch.randint(0, 4, (8,))


def _track(fn, constants: list[dict] | None = None) -> list[dict]:
    """The cuts reported while `fn` runs; the Python numbers added to the loss (not cuts)
    go to `constants` when given."""
    facts: list[dict] = []
    kept = constants if constants is not None else []
    tracker = CutTracker(lambda f: (kept if f["found"] == "constant" else facts).append(f))
    assert tracker.start()
    try:
        out = fn()
    finally:
        tracker.stop()
    # At the backward, as the probe does: a held add is a term if the loss sums it in.
    loss = out[0] if isinstance(out, tuple) else out
    if isinstance(loss, torch.Tensor) and loss.grad_fn is not None:
        walk = Walk(loss, focus=True)
        walk.remove()
        tracker.confirm(walk.on_term)
    else:
        tracker.confirm(None)
    assert tracker.error is None, tracker.error
    assert torch._C._len_torch_function_stack() == 0
    return facts


# -- cuts that reach the loss -------------------------------------------------------------
def test_detach_added_to_the_loss_names_both_lines():
    logits, y = _model_out()
    lines = {}

    def loss_code():
        ce = F.cross_entropy(logits, y)
        aux = logits.detach().pow(2).mean()
        lines["cut"] = _here(-1)
        loss = ce + aux
        lines["added"] = _here(-1)
        return loss

    (fact,) = _track(loss_code)
    assert fact["cut"] == "detach" and fact["found"] == "term"
    assert fact["cut_at"].endswith(lines["cut"]) and fact["added_at"].endswith(lines["added"])
    assert "logits.detach()" in fact["cut_code"]


@pytest.mark.parametrize(
    ("cut", "make"),
    [
        ("data", lambda t: t.data.abs().mean()),
        ("argmax", lambda t: t.argmax(-1).float().mean()),
        ("int_cast", lambda t: t.long().float().mean()),
        ("int_cast", lambda t: t.to(torch.int64).sum().float()),
        ("int_cast", lambda t: t.type(torch.LongTensor).float().mean()),
        ("index", lambda t: t.max(-1).indices.float().mean()),
        ("compare", lambda t: (t > 0).float().mean()),
    ],
)
def test_each_kind_of_cut_is_classified(cut, make):
    logits, y = _model_out()
    facts = _track(lambda: F.cross_entropy(logits, y) + make(logits))
    assert [f["cut"] for f in facts] == [cut]


def test_no_grad_names_the_op_run_under_it():
    logits, y = _model_out()

    def loss_code():
        with torch.no_grad():
            z = torch.logsumexp(logits, -1).pow(2).mean()
        return F.cross_entropy(logits, y) + z

    (fact,) = _track(loss_code)
    assert fact["cut"] == "no_grad" and fact["cut_op"] == "logsumexp"


def test_numpy_round_trip_is_followed_back_to_the_detach():
    logits, y = _model_out()
    lines = {}

    def loss_code():
        p = torch.from_numpy(logits.softmax(-1).detach().cpu().numpy())
        lines["cut"] = _here(-1)
        q = torch.as_tensor(np.asarray(logits.detach()))  # np.asarray: __array__
        # A copy on the way out and back (as .cpu() / .to(device) of a GPU tensor make).
        r = torch.from_numpy(logits.detach().double().numpy()).float()
        loss = F.cross_entropy(logits, y) + (p * p.log()).sum(-1).mean() + q.mean()
        return loss + r.mean()

    facts = _track(loss_code)
    assert len(facts) == 3 and all(f["numpy"] and f["cut"] == "detach" for f in facts)
    assert facts[0]["cut_at"].endswith(lines["cut"])


def test_a_requires_grad_leaf_made_from_a_detach_stays_cut():
    logits, y = _model_out()

    def loss_code():
        aux = logits.detach().abs().mean()
        aux.requires_grad_(True)  # silences the error, does not restore the graph
        return F.cross_entropy(logits, y) + aux

    (fact,) = _track(loss_code)
    assert fact["cut"] == "detach"


def test_in_place_accumulation_is_a_term():
    logits, y = _model_out()

    def loss_code():
        loss = F.cross_entropy(logits, y)
        loss += logits.detach().mean()
        return loss

    assert [f["cut"] for f in _track(loss_code)] == ["detach"]


def test_a_cut_tensor_that_gets_a_live_graph_in_place_is_no_longer_cut():
    logits, y = _model_out()

    def loss_code():
        buf = logits.detach().clone()
        buf.copy_(logits)  # in place: its value now comes with the graph
        return F.cross_entropy(logits, y) + buf.mean()

    assert _track(loss_code) == []


# -- healthy uses stay silent -------------------------------------------------------------
def test_healthy_uses_are_silent():
    logits, y = _model_out()
    teacher = nn.Linear(6, 4)  # a teacher whose params still require grad
    x = torch.randn(8, 6)

    def loss_code():
        ce_each = F.cross_entropy(logits, y, reduction="none")
        hard = (ce_each > ce_each.mean()).float()  # mask from a comparison
        ce = (ce_each * (1 + hard)).mean()
        idx = logits.argmax(-1, keepdim=True)  # argmax as a gather index
        top = logits.log_softmax(-1).gather(-1, idx).mean()
        acc = (logits.argmax(-1) == y).float().mean()  # argmax for a metric
        with torch.no_grad():
            target = teacher(x)  # a teacher target
        kd = F.mse_loss(logits, target.detach()) + F.mse_loss(logits, teacher(x).detach())
        weight = (1 - logits.softmax(-1)).detach()  # a detached weight multiplies the loss
        focal = (weight.gather(-1, y[:, None]) * ce_each[:, None]).mean()
        loss = ce - 0.01 * top + kd + focal + 0.0
        logged = loss.item() + acc.item()  # .item() for logging
        total = torch.zeros(())
        total = total + loss  # accumulation into a constant tensor: no cut
        return total, logged

    constants: list[dict] = []
    assert _track(loss_code, constants) == []
    # `+ 0.0` adds a Python number and `total + loss` a start of zeros: both reported so that
    # TD302 does not take their adds (a None input in the graph, like a detached term's) for
    # a detached term.
    assert [c["added_at"].rsplit(":", 1)[0] for c in constants] == ["tests/probes/test_cuts.py"] * 2


def test_item_is_only_a_hint():
    logits, y = _model_out()
    facts = _track(lambda: F.cross_entropy(logits, y) + logits.abs().mean().item())
    (fact,) = facts
    assert fact["cut"] == "item" and fact["found"] == "term"


def test_logged_part_is_linked_to_the_line_that_adds_it():
    logits, y = _model_out()
    facts: list[dict] = []
    tracker = CutTracker(facts.append)
    tracker.start()
    ce = F.cross_entropy(logits, y)
    aux = logits.detach().pow(2).mean()
    loss = ce + aux
    added = _here(-1)
    tracker.stop()
    tracker.parts({"ce": ce, "aux": aux, "other": torch.tensor(1.0), "n": 3.0})  # after stop
    assert loss.requires_grad
    part = [f for f in facts if f["found"] == "part"]
    assert [(f["part"], f["cut"]) for f in part] == [("aux", "detach")]
    assert part[0]["added_at"].endswith(added)


def test_the_rules_split_the_cut_kinds_as_the_tracker_names_them():
    from traindoctor.rules.loss_path import detached_branch, gradient_blocked_by_op

    assert detached_branch.DETACH_KINDS == cuts_mod.DETACH_KINDS
    assert detached_branch.OP_KINDS == cuts_mod.OP_KINDS
    assert set(gradient_blocked_by_op.NO_GRAPH) == set(cuts_mod.OP_KINDS)


# -- the mode stack, errors, bounds --------------------------------------------------------
class _UserMode(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _stack() -> list:
    n = torch._C._len_torch_function_stack()
    return [torch._C._get_function_stack_at(i) for i in range(n)]


def test_a_user_mode_entered_before_and_left_inside_the_window_keeps_the_stack_right():
    tracker = CutTracker(lambda f: None)
    user = _UserMode()
    user.__enter__()  # entered before the forward, left before the backward
    tracker.start()
    assert _stack() == [tracker, user]
    torch.ones(2) + 1
    user.__exit__(None, None, None)  # pops the top: its own mode, not the tracker
    assert _stack() == [tracker] and user.calls == 2  # torch.ones and the add
    tracker.stop()
    assert _stack() == []


def test_a_user_mode_entered_inside_and_left_after_the_window_stays():
    tracker = CutTracker(lambda f: None)
    tracker.start()
    user = _UserMode()
    user.__enter__()
    tracker.stop()  # the backward: the tracker leaves from under the user's mode
    assert _stack() == [user]
    user.__exit__(None, None, None)
    assert _stack() == []


def test_with_device_around_the_forward_only_comes_and_goes():
    # `with torch.device(...)` pops the top of the stack on exit, whatever it is.
    tracker = CutTracker(lambda f: None)
    with torch.device("cpu"):
        tracker.start()
        assert _stack()[0] is tracker
    assert _stack() == [tracker]
    with torch.device("cpu"):  # entered and left inside the window
        pass
    assert _stack() == [tracker]
    tracker.stop()
    assert _stack() == []


def test_default_device_of_set_default_device_stays_at_the_bottom():
    from torch.utils._device import DeviceContext

    tracker = CutTracker(lambda f: None)
    torch.set_default_device("cpu")
    try:
        tracker.start()
        assert isinstance(_stack()[0], DeviceContext) and _stack()[1] is tracker
        torch.set_default_device("cpu")  # its __exit__ wants the bottom: no AssertionError
        assert isinstance(_stack()[0], DeviceContext) and _stack()[1] is tracker
        tracker.stop()
    finally:
        torch.set_default_device(None)
    assert _stack() == []


def test_an_internal_error_loses_facts_never_the_call(monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("inside the tracker")

    tracker = CutTracker(lambda f: None)
    monkeypatch.setattr(tracker, "_observe", boom)
    tracker.start()
    out = torch.ones(3) * 2
    tracker.stop()
    assert torch.equal(out, torch.full((3,), 2.0))
    assert isinstance(tracker.error, ValueError)


def test_lineage_is_bounded_and_weak(monkeypatch):
    monkeypatch.setattr(cuts_mod, "MAX_LINEAGE", 50)
    w = torch.randn(4, requires_grad=True)
    tracker = CutTracker(lambda f: None)
    tracker.start()
    keep = [w.detach() * i for i in range(200)]
    tracker.stop()
    assert len(tracker._lineage) <= 50
    assert keep  # the tracker holds no tensor alive
    del keep
    assert all(ref() is None for ref, _, _ in tracker._lineage.values())


# -- inside watch() -----------------------------------------------------------------------
def _loop(doc_fn, steps=6, bug=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = doc_fn(model, opt) if doc_fn else None
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        aux = (logits.detach() if bug else logits).pow(2).mean()
        loss = ce + 0.1 * aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        if doc is not None:
            doc.log(loss=loss, parts={"ce": ce, "aux": 0.1 * aux})
    return model, doc


def test_watch_reports_the_cut_and_leaves_training_and_stack_untouched(tmp_path):
    plain, _ = _loop(None)
    watched, doc = _loop(lambda m, o: watch(m, o, tmp_path))
    report = doc.close()
    assert_bit_identical(params_of(plain), params_of(watched))
    assert torch._C._len_torch_function_stack() == 0
    assert not report.internal_errors
    top = report.findings[0]
    assert top.code == "TD302" and top.evidence["cut"] == "detach"
    assert "`.detach()` at" in top.title
    assert top.evidence["cut_at"].endswith(_line_here("aux = (logits.detach() if bug"))


def test_the_tracker_is_off_on_unsampled_steps(tmp_path, monkeypatch):
    starts: list[int] = []
    original = CutTracker.start

    def start(self):
        starts.append(1)
        return original(self)

    monkeypatch.setattr(CutTracker, "start", start)
    calls = {}
    for steps in (1, 8):
        _, doc = _loop(lambda m, o, d=tmp_path / str(steps): watch(m, o, d), steps=steps)
        probe = next(p for p in doc.probes if p.name == "gradpath")
        calls[steps] = probe._cuts.calls
        assert not probe._cuts.active and torch._C._len_torch_function_stack() == 0
        doc.close()
    assert gradpath_mod.GRADPATH_EVERY > 8
    assert starts == [1, 1]  # step 1 only: the one walk of each run
    assert calls[1] > 0 and calls[8] == calls[1]  # steps 2-8 ran no torch call through it


def test_healthy_loop_records_no_cut(tmp_path):
    _, doc = _loop(lambda m, o: watch(m, o, tmp_path), bug=False)
    report = doc.close()
    assert doc.timeline.events("gradient_cut") == []
    assert not [f for f in report.findings if f.code in ("TD301", "TD302")]


# -- the bundled scenarios name the planted cut --------------------------------------------
@pytest.mark.parametrize("watched", [True, False], ids=["watch", "zero-code"])
@pytest.mark.parametrize(
    ("name", "cut", "marker"),
    [
        ("aux_loss_numpy_roundtrip", "detach", "BUG: numpy round-trip"),
        ("aux_loss_no_grad", "no_grad", "z-loss, no graph"),
        ("argmax_selection_loss", "argmax", "BUG: argmax has no gradient"),
    ],
)
def test_scenario_names_the_planted_cut(name, cut, marker, watched, tmp_path):
    scenario = get(name)
    report = run_scenario(scenario, out_dir=tmp_path, watch=watched)
    top = report.findings[0]
    assert top.evidence["cut"] == cut
    planted_in = inspect.getsourcefile(scenario.train.func)  # the module of its train()
    assert top.evidence["cut_at"].endswith(line_in(planted_in, marker))
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("name", ["aux_loss_no_grad", "aux_loss_numpy_roundtrip"])
def test_scenario_params_are_bit_identical_when_watched(name, tmp_path):
    import traindoctor as td

    scenario = get(name)
    plain = params_of(scenario.train(steps=6))
    docs = []

    def watch_fn(model, optimizer, scaler=None):
        docs.append(td.watch(model, optimizer, scaler, out_dir=tmp_path, console=False))
        return docs[-1]

    watched = params_of(scenario.train(steps=6, watch=watch_fn))
    report = docs[0].close()
    assert docs[0].timeline.events("gradient_cut")  # the tracker did run
    assert not report.internal_errors
    assert_bit_identical(plain, watched)

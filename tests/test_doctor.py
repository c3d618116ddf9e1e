"""Doctor: failure isolation (a broken rule or probe never reaches the loop), close() semantics,
the context manager and the user's own exceptions."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch

import traindoctor as td
from tests._loop import (
    OPTIMIZERS,
    assert_bit_identical,
    assert_detached,
    make_model,
    params_of,
    train,
    watch,
)
from traindoctor.doctor import Doctor
from traindoctor.findings import Severity
from traindoctor.probes import default_probes
from traindoctor.probes.base import Probe
from traindoctor.rules import all_rules, get_rule
from traindoctor.rules._registry import _unregister, rule

STEPS = 30


def _plain_params() -> list[torch.Tensor]:
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    torch.manual_seed(5)
    train(model, opt, STEPS, validate_every=10)
    return params_of(model)


def _doctor_run(tmp_path, **doctor_kw):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    torch.manual_seed(5)
    doc = Doctor(out_dir=tmp_path / "runs", console=False, **doctor_kw)
    doc.attach({"": model}, [opt])
    train(model, opt, STEPS, doc=doc, log=True, validate_every=10)
    report = doc.close()
    return doc, report, model, opt


@pytest.fixture
def failing_rule():
    @rule(
        code="TD199",
        name="always-raises",
        severity=Severity.ERROR,
        summary="A test rule that raises.",
        requires=("loss.backward",),
    )
    def always_raises(tl):
        raise ZeroDivisionError("rule exploded")

    try:
        yield get_rule("TD199")
    finally:
        _unregister("TD199")
    assert get_rule("TD199") is None


def test_failing_rule_is_isolated(tmp_path, failing_rule):
    doc, report, model, opt = _doctor_run(tmp_path, rules=[*all_rules(), failing_rule])
    assert_bit_identical(params_of(model), _plain_params())
    assert report.steps == STEPS
    errors = [e for e in report.internal_errors if e["where"] == "rule TD199"]
    assert len(errors) == 1, report.internal_errors
    assert errors[0]["error"] == "ZeroDivisionError: rule exploded"
    assert errors[0]["step"] == 1
    assert "TD199" not in report.codes
    assert report.status == "healthy", report.codes
    on_disk = json.loads((report.run_dir / "findings.json").read_text())
    assert on_disk["internal_errors"] == report.internal_errors
    assert_detached(model, opt)


class BadPreStep(Probe):
    name = "bad-pre-step"
    provides: ClassVar[tuple[str, ...]] = ()

    def __init__(self):
        super().__init__()
        self.calls = 0

    def on_pre_step(self, step, sampled, rec):
        self.calls += 1
        raise RuntimeError("probe exploded in on_pre_step")


class BadBackward(Probe):
    name = "bad-backward"
    provides: ClassVar[tuple[str, ...]] = ()

    def on_backward(self, step, root, loss, rec):
        raise ValueError("probe exploded in on_backward")


class BadHook(Probe):
    """Raises inside a torch hook it installed through ctx.hook()."""

    name = "bad-hook"
    provides: ClassVar[tuple[str, ...]] = ()

    def attach(self, ctx, rec):
        super().attach(ctx, rec)
        for _, model in ctx.models.items():
            self.handles.append(model.register_forward_hook(ctx.hook("probe bad-hook", self._hook)))

    def _hook(self, module, inputs, output):
        raise KeyError("probe exploded in a forward hook")


class BadAttach(Probe):
    name = "bad-attach"
    provides: ClassVar[tuple[str, ...]] = ()

    def attach(self, ctx, rec):
        raise TypeError("probe exploded in attach")


class BadDetach(Probe):
    name = "bad-detach"
    provides: ClassVar[tuple[str, ...]] = ()

    def detach(self):
        raise RuntimeError("probe exploded in detach")


@pytest.mark.parametrize(
    ("probe", "where", "error"),
    [
        (BadPreStep, "probe bad-pre-step", "RuntimeError: probe exploded in on_pre_step"),
        (BadBackward, "probe bad-backward", "ValueError: probe exploded in on_backward"),
        (BadHook, "probe bad-hook", "KeyError: 'probe exploded in a forward hook'"),
        (BadAttach, "probe bad-attach", "TypeError: probe exploded in attach"),
        (BadDetach, "probe bad-detach detach", "RuntimeError: probe exploded in detach"),
    ],
)
def test_failing_probe_is_isolated(tmp_path, probe, where, error):
    bad = probe()
    doc, report, model, opt = _doctor_run(tmp_path, probes=[*default_probes(), bad])
    assert_bit_identical(params_of(model), _plain_params())
    assert report.steps == STEPS
    assert [(e["where"], e["error"]) for e in report.internal_errors] == [(where, error)]
    # The other probes kept working: the healthy run is still diagnosed as healthy.
    assert report.status == "healthy", report.codes
    assert len(doc.timeline.series("loss.backward")) == STEPS
    if isinstance(bad, BadPreStep):
        assert bad.calls == 1  # disabled after its first error, not called every step
    if not isinstance(bad, BadDetach):
        assert_detached(model, opt)


def test_close_is_idempotent(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["sgd-momentum"](model)
    doc = watch(model, opt, tmp_path)
    train(model, opt, 3, doc=doc)
    first = doc.close()
    findings_json = (first.run_dir / "findings.json").read_text()
    second = doc.close()
    assert second is first
    assert (first.run_dir / "findings.json").read_text() == findings_json
    assert_detached(model, opt)
    # training on after close is harmless and not recorded
    train(model, opt, 2, doc=doc, log=True)
    assert doc.close() is first
    assert doc.timeline.last_step == 3


def test_with_block_closes_and_writes_the_run_dir(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    with watch(model, opt, tmp_path) as doc:
        assert isinstance(doc, td.Doctor)
        train(model, opt, 4, doc=doc, log=True)
    report = doc.report
    assert report is not None
    assert report.run_dir == tmp_path / "runs" / doc.run_id
    for name in ("findings.json", "report.md", "timeline.jsonl"):
        assert (report.run_dir / name).is_file(), name
    data = json.loads((report.run_dir / "findings.json").read_text())
    assert data["schema"] == 1 and data["tool"] == "traindoctor"
    assert data["steps"] == 4
    assert data["status"] == "healthy"
    assert data["run"]["ended"] == "normal"
    assert_detached(model, opt)


def test_user_exception_propagates_unchanged_and_is_recorded(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    raised = ValueError("bad batch shape")

    def boom(step):
        if step == 3:
            raise raised

    with pytest.raises(ValueError) as info, watch(model, opt, tmp_path) as doc:
        train(model, opt, 10, doc=doc, on_step=boom)
    assert info.value is raised
    assert info.value.__traceback__ is not None
    outcome = doc.report.outcome
    assert outcome["ended"] == "exception"
    assert outcome["exception"] == "ValueError: bad batch shape"
    assert outcome["source"].endswith(".py:" + outcome["source"].rsplit(":", 1)[1])
    assert "test_doctor.py" in outcome["source"]
    on_disk = json.loads((doc.report.run_dir / "findings.json").read_text())
    assert on_disk["run"]["exception"] == "ValueError: bad batch shape"
    assert doc.report.internal_errors == []
    assert_detached(model, opt)


def test_keyboard_interrupt_propagates_and_is_recorded(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)

    def stop(step):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), watch(model, opt, tmp_path) as doc:
        train(model, opt, 5, doc=doc, on_step=stop)
    assert doc.report.outcome["ended"] == "interrupted"
    assert_detached(model, opt)


def test_internal_errors_do_not_hide_real_findings(tmp_path, failing_rule):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    doc = Doctor(out_dir=tmp_path / "runs", console=False, rules=[*all_rules(), failing_rule])
    doc.attach({"": model}, [opt])
    train(model, opt, 5, doc=doc)
    report = doc.close()
    assert "TD104" in report.codes
    assert [e["where"] for e in report.internal_errors] == ["rule TD199"]


def test_close_without_attach_reports_no_finding(tmp_path):
    # e.g. `traindoctor run` on a script that failed before building its model
    doc = Doctor(out_dir=tmp_path / "runs", console=False)
    report = doc.close(RuntimeError("script failed before the model"))
    assert report.outcome["ended"] == "exception"
    assert report.outcome["observed"] is False
    assert report.findings == []
    assert report.internal_errors == []


def test_max_steps_stops_the_loop_cleanly(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    torch.manual_seed(5)
    with Doctor(out_dir=tmp_path / "runs", console=False, max_steps=5) as doc:
        doc.attach({"": model}, [opt])
        train(model, opt, 50, doc=doc)
    assert doc.report.steps == 5
    assert doc.report.outcome["ended"] == "max_steps"
    assert_detached(model, opt)
    plain = make_model()
    plain_opt = OPTIMIZERS["adamw"](plain)
    torch.manual_seed(5)
    train(plain, plain_opt, 5)
    assert_bit_identical(params_of(model), params_of(plain))


def test_a_failing_report_renderer_never_reaches_the_loop(tmp_path, monkeypatch):
    import traindoctor.report as report_pkg

    def broken(_report):
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(report_pkg, "render_markdown", broken)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 3)).pow(2).mean().backward()
            opt.step()
    report = doc.report
    assert report is not None
    assert "renderer bug" in (report.write_error or "")
    assert any(e["where"] == "report writer" for e in report.internal_errors)


def _builtin_probe_events():
    from traindoctor.probes import PROBES
    from traindoctor.probes.base import Probe

    events = [
        "attach",
        "on_backward",
        "on_after_backward",
        "on_optimizer_pre_step",
        "on_optimizer_post_step",
        "on_pre_step",
        "on_post_step",
        "on_step_end",
        "prepare",
    ]
    return [
        pytest.param(cls, event, id=f"{cls.name}.{event}")
        for cls in PROBES
        for event in events
        if getattr(cls, event) is not getattr(Probe, event)
    ]


@pytest.mark.parametrize(("cls", "event"), _builtin_probe_events())
def test_a_failing_builtin_probe_gives_no_false_finding(tmp_path, monkeypatch, cls, event):
    # The failed probe's signals stop; rules that need them are skipped, not misled.
    original = getattr(cls, event)
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 5:
            raise RuntimeError(f"{cls.name}.{event} broke")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, event, flaky)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(60):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
    report = doc.report
    flagged = [f.code for f in report.findings if f.severity.value in ("error", "warning")]
    assert flagged == []
    if calls["n"] >= 5:
        assert any(cls.name in e["where"] for e in report.internal_errors)


def test_a_new_loss_at_a_freed_losss_address_is_not_dated_to_the_old_step(tmp_path):
    """The allocator reuses a freed loss's memory: the next step's loss, logged before its
    backward, may sit at the same address. Only a live last loss (or a tensor sharing its
    storage while it lives) dates a logged loss to the previous step."""
    import numpy as np

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    memory = np.zeros((), dtype=np.float32)
    old = torch.from_numpy(memory)
    doc._steps.note_backward(old)
    doc._clock.advance()  # the old loss's step closed
    same = old.detach()
    assert doc._log_step(same) == doc.step - 1  # its storage, the loss still alive
    del old, same
    new = torch.from_numpy(memory)  # a new tensor at the freed loss's address
    assert doc._log_step(new) == doc.step
    doc.close()

"""Leftovers of the last sessions' trust work (session 30).

L-BFGS with a closure: `optimizer.step(closure)` evaluates the closure several times (its line
search), and L-BFGS updates the weights in place between the evaluations. Each evaluation's
backward was counted as a step, and the in-place updates between them as updates written by
hand: 15 `step(closure)` calls made ~300 steps, TD515 warned of unnormalized accumulation under
`td.watch(model)` and TD210 could read a line-search trial as a loss spike. A step is now one
optimizer step: the closure's first evaluation is the step's backward and its loss (the value
step() returns, at the weights the step starts from, as any optimizer's step loss), the others
are counted as evaluations of that step (`optim.evaluations`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

import traindoctor as td
from traindoctor.doctor import Doctor
from traindoctor.findings import Severity
from traindoctor.integrations.autopatch import attached

_LOUD = (Severity.ERROR, Severity.WARNING)


def _lbfgs(
    attach=None, steps: int = 5, **lbfgs: object
) -> tuple[list[float], list[torch.Tensor], object]:
    torch.manual_seed(0)
    x = torch.randn(128, 4)
    y = x @ torch.randn(4, 1) + 0.1 * torch.randn(128, 1)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.8, max_iter=6, **lbfgs)
    losses: list[float] = []
    doc = attach(model, opt) if attach is not None else None
    for _ in range(steps):

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses.append(opt.step(closure).item())
    return losses, [p.detach().clone() for p in model.parameters()], doc


def _check(doc, losses: list[float], steps: int = 5) -> None:
    report = doc.close()
    tl = doc.timeline
    assert report.steps == steps
    assert not tl.series("optim.hand_step")
    evaluations = dict(tl.series("optim.evaluations"))
    assert evaluations and all(n > 1 for n in evaluations.values())
    # One backward per step, its loss the value step() returned (the first evaluation).
    back = dict(tl.series("loss.backward"))
    assert [len(v) for v in back.values()] == [1] * len(back)
    for step, values in back.items():
        assert abs(values[0] - losses[step - 1]) <= 1e-6 * max(1.0, abs(losses[step - 1]))
    assert not [f for f in report.findings if f.severity in _LOUD], report.findings


def test_lbfgs_closure_steps_are_optimizer_steps(tmp_path) -> None:
    plain_losses, plain, _ = _lbfgs()
    losses, params, doc = _lbfgs(lambda m, o: td.watch(m, o, out_dir=tmp_path, console=False))
    assert losses == plain_losses
    assert all(torch.equal(a, b) for a, b in zip(params, plain))
    _check(doc, losses)


def test_lbfgs_adopted_by_watch_model_only(tmp_path) -> None:
    """watch(model) without its optimizer: the L-BFGS is adopted at its first step, whose
    in-place updates between the closure's evaluations are no updates by hand."""
    losses, _, doc = _lbfgs(
        lambda m, o: td.watch(m, out_dir=tmp_path, console=False), line_search_fn="strong_wolfe"
    )
    _check(doc, losses)


def test_lbfgs_zero_code(tmp_path) -> None:
    doc = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doc):
        losses, _, _ = _lbfgs()
    _check(doc, losses)


# -- a later phase on a model traindoctor does not watch --------------------------------------
# td.watch(teacher, opt), then a student built later and updated by hand (`p -= lr * p.grad`):
# the watched optimizer stops, the backward passes go on, and TD105 said "step() ran 20 times
# then not once" as an error. The backward passes measured since (idle_backward) feed none of
# the watched params: TD105 now says that in an info. The twin whose step() stops under a
# condition while the watched model still gets gradients keeps the error.


def _later_phase(tmp_path, bug: bool) -> list:
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, :3] * torch.tensor([1.0, -1.0, 0.5])).argmax(1)

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))

    teacher = net()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    doc = td.watch(teacher, opt, out_dir=tmp_path, console=False)
    for i in range(40 if bug else 20):
        idx = torch.randint(0, 256, (32,))
        loss = nn.functional.cross_entropy(teacher(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        if not bug or i < 20:  # the bug: step() under a condition true only at the start
            opt.step()
    if not bug:
        student = net()
        for _ in range(20):
            idx = torch.randint(0, 256, (32,))
            with torch.no_grad():
                soft = teacher(x[idx]).softmax(1)
            out = student(x[idx])
            loss = nn.functional.kl_div(out.log_softmax(1), soft, reduction="batchmean")
            student.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in student.parameters():
                    p -= 0.1 * p.grad
    return doc.close().findings


def test_later_phase_by_hand_is_not_blamed_on_the_watched_model(tmp_path) -> None:
    findings = _later_phase(tmp_path, bug=False)
    assert not [f for f in findings if f.severity in _LOUD], findings
    td105 = [f for f in findings if f.code == "TD105"]
    assert td105 and td105[0].evidence["watched_params_fed"] == 0


def test_step_under_a_condition_on_the_watched_model_still_an_error(tmp_path) -> None:
    findings = _later_phase(tmp_path, bug=True)
    assert [f.severity for f in findings if f.code == "TD105"] == [Severity.ERROR]

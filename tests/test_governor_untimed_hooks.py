"""Issue 15's honest governor: calls of hooks that time nothing themselves are counted and
charged like a timed call; with one optimizer its step is counted at the primary step."""

from __future__ import annotations

import torch

import traindoctor as td
from traindoctor._hooks import UNTIMED_HOOK_CALLS, CopySafeHook
from traindoctor.governor import UNTIMED_PER_CALL, Governor


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_plain_copy_safe_hook_call_is_counted_and_charged():
    clock = FakeClock()
    gov = Governor(clock)
    gov.attached(0.0)
    hook = CopySafeHook(lambda *args: None)
    before = UNTIMED_HOOK_CALLS[0]
    for _ in range(7):
        hook(None, ())
    assert UNTIMED_HOOK_CALLS[0] - before == 7
    clock.now += 0.01
    gov.step_end(1, True, spent=0.0, calls=2)
    # 2 timed calls and 7 untimed hook calls, each charged what a call costs outside a timer.
    assert gov.untimed_s == 9 * UNTIMED_PER_CALL
    clock.now += 0.01
    gov.step_end(2, True, spent=0.0, calls=0)
    assert gov.untimed_s == 9 * UNTIMED_PER_CALL  # counted once, at the step they ran in


def test_guarded_hooks_time_themselves_and_are_not_counted(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    try:
        ctx = doc.run.attached
        guarded = ctx.hook("probe test", lambda *args: None)
        before = UNTIMED_HOOK_CALLS[0]
        guarded(None, ())
        assert UNTIMED_HOOK_CALLS[0] == before
    finally:
        doc.close()


def _steps(tmp_path, optimizers: int, steps: int = 12):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    params = list(model.parameters())
    opts = [torch.optim.SGD(params[:2], lr=0.1), torch.optim.SGD(params[2:], lr=0.1)]
    if optimizers == 1:
        opts = [torch.optim.SGD(params, lr=0.1)]
    doc = td.watch(model, opts if optimizers > 1 else opts[0], out_dir=tmp_path, console=False)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(steps):
        for o in opts:
            o.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        for o in opts:
            o.step()
        doc.log(loss=loss)
    tl = doc.timeline
    any_steps = [tl.get(s, "optim.any_step") for s in range(1, steps + 2)]
    activity = [dict(a) for a in tl.facts.get("optimizer_activity") or []]
    doc.close()
    return any_steps, activity


def test_one_optimizer_counts_every_step_on_sampled_and_unsampled_steps(tmp_path):
    # Its step is counted at the primary step (on_post_step): the same records as when
    # on_optimizer_post_step counted it on every step (checked against 1c07579).
    any_steps, activity = _steps(tmp_path, optimizers=1)
    assert any_steps == [1] * 12 + [None]
    # One pass a step, each from zero_grad(): never two passes summed (TD515 reads max_summed).
    one = {"steps": 12, "pending": 0, "max_pending": 0, "fresh": 0, "since": 0}
    assert activity == [{**one, "summed": 0, "max_summed": 1}]


def test_two_optimizers_count_each_step_of_each(tmp_path):
    # The second optimizer steps after the primary one closed the step: it lands on the next.
    any_steps, activity = _steps(tmp_path, optimizers=2)
    assert any_steps == [1] + [2] * 11 + [1]
    each = {"steps": 12, "pending": 0, "max_pending": 1, "fresh": 12, "since": 12}
    each.update(summed=0, max_summed=1)
    assert activity == [each, each]

"""Fix trials (issue 17): does the fix an error finding proposes help, on this run?

For each error finding with a declared fix (fixes.py; and the warnings of WARNING_TRIALS:
TD515, whose replay sums k micro-batch losses a step), at close and on a copy: K optimizer
steps from the captured initial weights, with a fresh optimizer of the user's class and
groups, on the captured batches (up to 8, cycled), once as written (every reproducible bug of
the run replayed in the loop) and once with the fix. Both loss curves go in the finding's
`evidence["trial"]`, with the verdict ("fix helps" / "fix does not help" / "not run: <why>"),
the cost in steps and seconds, and a sentence in its cause. A fix that does not help ranks
the finding lower.

The verdict compares the mean loss over all the captured batches at the final weights of
each arm (the same batches, the same dropout draws); where the fix changes the loss input
(TD506), both final models are scored with the fixed forward. It reads no clock: identical
runs give identical verdicts.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from typing import Any

import torch

from ..findings import Finding, Severity, rank
from . import fix_amp  # noqa: F401  (registers TD204's fix; fix_branch: TD301's, TD302's)
from .fidelity import StepDriver, describe
from .fix_branch import TRACED, traced
from .fixes import (
    FIX_NAMES,
    STEPS,
    WARNING_TRIALS,
    Arm,
    NotRun,
    Plan,
    plan_for,
    probability_module,
)
from .runner import (
    Batch,
    Replay,
    Setup,
    build_optimizer,
    fresh_copy,
    isolated,
    memory_short,
)
from .trial_record import with_trial

ROUNDS = 3  # rounds at most (30, 60, 90 steps) while the fix has not helped yet
MAX_TRIALS = 4  # error findings tried per run (highest ranked first): a bounded cost at close
# What all the trials of one close may cost, in parameter-steps (a step of each arm counts the
# model's parameters): 83 rounds of a 1M-param model, 2 of a 40M one, none above 83M params
# (GPT-2's 124M: not run, said so).
BUDGET = 5e9
TRIAL_MEMORY = 8.0  # model sizes: two copies, each with its grads and two optimizer states
HELPS = 0.05  # the fix helps: its final loss is below the as-written one by 5% of the start
ROUND = 5
AS_WRITTEN, WITH_FIX = "as written", "with fix"


def run_trials(
    setup: Setup | None,
    findings: list[Finding],
    skipped: str | None = None,
    parts: dict[str, Any] | None = None,
) -> list[Finding]:
    """The findings, each error finding with a declared fix carrying its trial; ranked again
    when a verdict moved one. `skipped`: why nothing can be replayed (said in each trial)."""
    candidates = [
        f
        for f in findings
        if FIX_NAMES.get(f.code) and (f.severity is Severity.ERROR or f.code in WARNING_TRIALS)
    ]
    if not candidates:
        return findings
    reason = _why_not(setup, skipped, parts)
    # The trials that replay the recorded loss code (fix_branch.py) replay every term of it.
    whole = _why_not_traced(setup, skipped) if TRACED & {f.code for f in candidates} else None
    plans: dict[int, Plan | NotRun] = {}
    for f in candidates:
        why = whole if f.code in TRACED else reason
        if why is not None:
            plans[id(f)] = NotRun(FIX_NAMES[f.code], why)
            continue
        try:
            plan = plan_for(f, setup)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001  (a trial never reaches the user)
            plan = NotRun(FIX_NAMES[f.code], f"{type(exc).__name__}: {exc}"[:200])
        if plan is not None:
            plans[id(f)] = plan
    # The run as written: every reproducible bug in the loop at once.
    baseline = Arm()
    for plan in plans.values():
        if isinstance(plan, Plan):
            baseline = baseline.merged(plan.as_written)
    runnable = sum(isinstance(p, Plan) for p in plans.values())
    size = sum(p.numel() for p in setup.model.parameters()) if setup is not None else 0
    # A replayed step costs a forward and backward per micro-batch (an accumulation run).
    affordable = int(BUDGET // max(2 * STEPS * size * baseline.micro, 1))
    trials = min(runnable, MAX_TRIALS, affordable)
    rounds = min(ROUNDS, affordable // trials) if trials else 0
    tried = 0
    out = []
    done: dict[Any, dict[str, Any]] = {}  # the same arms (TD206 and TD210: lr x0.1) run once
    for f in findings:
        plan = plans.get(id(f))
        if plan is None:
            out.append(f)
            continue
        key = _key(plan, baseline) if isinstance(plan, Plan) else None
        if key in done:
            trial = dict(done[key])
        elif isinstance(plan, Plan) and tried >= trials:
            trial = _not_run(plan.fix, _over_budget(tried, size, baseline.micro))
        elif isinstance(plan, NotRun):
            trial = _not_run(plan.fix, plan.reason)
        else:
            tried += 1
            trial = done[key] = _trial(setup, plan, baseline, rounds)  # type: ignore[arg-type]
        out.append(with_trial(f, trial))
    return rank(out)


def _key(plan: Plan, baseline: Arm) -> Any:
    written = baseline.merged(plan.both)
    return (plan.fix, written, written.merged(plan.with_fix), plan.same_loss)


def _over_budget(tried: int, size: int, micro: int = 1) -> str:
    if tried >= MAX_TRIALS:
        return f"{MAX_TRIALS} trials already run at this close"
    passes = f" ({micro} micro-batches each)" if micro > 1 else ""
    return (
        f"a trial costs {2 * STEPS} steps{passes} of the {size / 1e6:.3g}M-param model on a "
        f"copy, over the {BUDGET:.0e} parameter-steps the trials may spend at close"
    )


def _why_not(setup: Setup | None, skipped: str | None, parts: dict[str, Any] | None) -> str | None:
    if skipped:
        return skipped
    if setup is None:
        return (
            "the experiments are off (run under `traindoctor check` or TRAINDOCTOR_EXPERIMENTS=1)"
        )
    if setup.batch is None:
        return "the loss is custom code (no torch.nn.functional loss on the model's output)"
    if setup.optimizer_class is not None and issubclass(setup.optimizer_class, torch.optim.LBFGS):
        return "LBFGS re-evaluates the loss inside its step: the two arms are not replayed"
    return _not_the_run(parts) or _memory_short(setup.model)


def _why_not_traced(setup: Setup | None, skipped: str | None) -> str | None:
    """Why the recorded loss code cannot be replayed (fix_branch.py's trials), or None: a
    loss written by hand (no standard call captured) is replayed from it."""
    if setup is not None and setup.batch is None and setup.traced:
        return _why_not(dataclasses.replace(setup, batch=setup.traced[0]), None, None)
    return _why_not(setup, skipped, None)


def _memory_short(model: torch.nn.Module) -> str | None:
    """Why two copies (both arms, each with its grads and two optimizer states) should not be
    made now, or None."""
    return memory_short(
        model, TRIAL_MEMORY, "a trial (two copies, their grads and optimizer states) needs"
    )


def _not_the_run(parts: dict[str, Any] | None) -> str | None:
    """Why a replay of the captured loss call would not be the run's training, or None: the
    step backpropagates more than that call (several standard losses, or terms written by
    hand), or a multiple of it other than 1/micro-batches (`loss / accum_steps`)."""
    if parts is None:
        return None
    forwards, losses = max(parts["forwards"], 1), parts["losses"]
    if losses > forwards:
        return (
            f"the loss has several parts ({losses} standard loss calls for {forwards} forward "
            "pass(es) in a step): a replay of one part is not the run"
        )
    replayed, backward = parts.get("replayed"), parts.get("backward")
    if replayed is None or backward is None:
        return None
    if not (math.isfinite(replayed) and math.isfinite(backward)):
        return "the first loss is not finite"
    for k in range(1, max(parts.get("micro_batches", forwards), forwards) + 1):
        if abs(backward - replayed / k) <= 1e-4 * max(abs(backward), abs(replayed), 1e-6):
            return None
    return (
        f"the loss backpropagated at the first captured step ({backward:.7g}) is not the "
        f"replayed {parts.get('fn', 'loss')} call ({replayed:.7g}): terms written by hand are "
        "added to it, or it is scaled"
    )


def _not_run(fix: str, reason: str) -> dict[str, Any]:
    return {
        "fix": fix,
        "steps": 0,
        "batches": 0,
        "curves": {},
        "verdict": f"not run: {reason}",
        "seconds": 0.0,
    }


def _trial(setup: Setup, plan: Plan, baseline: Arm, rounds: int) -> dict[str, Any]:
    """Both arms, STEPS steps a round; a further round (up to `rounds`) while the fix has not
    helped yet and its own arm still learns: a slow fix is not called useless after 30 steps."""
    t0 = time.perf_counter()
    written = baseline.merged(plan.both)
    arms = {AS_WRITTEN: written, WITH_FIX: written.merged(plan.with_fix)}
    # Both final models are scored with the fixed forward when the fix changes the loss input.
    scorer = None if plan.same_loss else arms[AS_WRITTEN if plan.score_as_written else WITH_FIX]
    try:
        with isolated(setup.model):
            runs = {label: ArmRun(setup, arm, scorer) for label, arm in arms.items()}
            for _ in range(rounds):
                for run in runs.values():
                    run.train(STEPS)
                helps = _helps(runs[AS_WRITTEN], runs[WITH_FIX])
                w = runs[WITH_FIX]
                if helps or not (math.isfinite(w.end) and w.end < w.start):
                    break
            for run in runs.values():
                run.finish()
    except Exception as exc:  # noqa: BLE001  (recorded in the finding, never raised)
        trial = _not_run(plan.fix, f"{type(exc).__name__}: {exc}"[:300])
        trial["traceback"] = traceback.format_exc(limit=3)[-800:]
        return trial
    a, w = runs[AS_WRITTEN], runs[WITH_FIX]
    steps = w.steps
    verdict = "fix helps" if helps else "fix does not help"
    scored = "" if plan.same_loss else " (both scored on the fixed forward)"
    if not plan.same_loss and plan.score_as_written:
        scored = " (both scored on the loss as written)"
    k = written.micro
    extra: dict[str, Any] = {}
    if k > 1:
        extra["accumulation"] = (
            f"{k} micro-batches a step: the captured batches (one from each of the run's "
            f"first steps) in groups of {k}; each curve point is their mean loss"
        )
    if plan.note:
        extra["note"] = plan.note
    summary = (
        f"with {plan.fix}, the mean loss on the same {w.n} batches goes {_num(w.start)} -> "
        f"{_num(w.end)} in {steps} steps; as written it goes {_num(a.start)} -> "
        f"{_num(a.end)}{scored}"
    )
    return {
        "fix": plan.fix,
        "steps": steps,
        "batches": w.n,
        "curves": {label: [round(v, ROUND) for v in r.curve] for label, r in runs.items()},
        "verdict": verdict,
        "seconds": round(time.perf_counter() - t0, 3),
        "start": {label: _round(r.start) for label, r in runs.items()},
        "end": {label: _round(r.end) for label, r in runs.items()},
        "cost": f"{a.steps + w.steps} steps on a copy"
        + (f" ({k * (a.steps + w.steps)} forward and backward passes)" if k > 1 else ""),
        "summary": summary,
        "replay": describe(setup, written, setup.batch),
        **({"clipping": f"{setup.clip[0]}({setup.clip[1]:g})"} if setup.clip else {}),
        **extra,
    }


def _helps(a: ArmRun, w: ArmRun) -> bool:
    """The fix's mean loss over the batches ends below the as-written one by HELPS of the
    start, or stays finite where the as-written one does not."""
    if not math.isfinite(w.end):
        return False
    if not math.isfinite(a.end):
        return True
    ref = max(abs(a.start), abs(w.start), 1e-12)
    return w.end < a.end - HELPS * ref


class ArmRun:
    """One arm on a fresh copy, trained a round at a time: its loss curve (the loss before each
    step, and one after the last at `finish`), the mean loss over all the batches at the start
    and after the last round (with `scorer`'s forward when given), its own RNG stream."""

    def __init__(self, setup: Setup, arm: Arm, scorer: Arm | None) -> None:
        self.setup, self.arm, self.scorer = setup, arm, scorer or arm
        self.twin = twin = fresh_copy(setup)
        _set_modes(twin, setup, arm)
        _swap_module(twin, setup, arm)
        self.batches = _arm_batches(setup, arm)
        self.replays = [Replay(b) for b in self.batches]
        self.n = min(len(self.batches), STEPS)
        self.start = _score(twin, setup, self.scorer, self.n)
        self.end = self.start
        self.opt = build_optimizer(setup, twin, arm.lr_scale)
        if arm.extra_params:
            _add_group(self.opt, twin, arm.extra_params)
        self.carry = set(arm.carry_grads)
        self.params = list(twin.named_parameters())
        self.clip = _clipping(setup, [p for _, p in self.params])
        # The run's lr per step, its GradScaler and the order of unscale_/clip/step.
        self.driver = StepDriver(setup, arm, self.opt, self.clip)
        self.values: list[torch.Tensor] = []
        self.curve: list[float] = []
        self.steps = 0
        self.diverged = False
        torch.manual_seed(0)  # both arms draw the same dropout masks
        self.rng = _rng_state(twin)

    def train(self, k: int) -> None:
        if self.diverged:
            return
        _set_rng_state(self.twin, self.rng)
        for _ in range(k):
            if self.steps == self.arm.eval_from and self.steps > 0:
                _eval(self.twin, self.arm)  # the script's .eval() that was never undone
            for name, p in self.params:
                if name not in self.carry:
                    p.grad = None
            self.driver.set_lr(self.steps)
            if not self._accumulate():
                self.diverged = True
                break
            self.driver.step()
            self.steps += 1
        self.rng = _rng_state(self.twin)
        self.end = math.inf if self.diverged else _score(self.twin, self.setup, self.scorer, self.n)

    def _accumulate(self) -> bool:
        """One optimizer step's backward passes: the arm's micro-batches (one batch, but for
        an accumulation run), each loss times the arm's scale; their mean loss is the curve's
        point. False, with nothing backpropagated after it, at a non-finite loss."""
        micro, scale = self.arm.micro, self.arm.loss_scale
        total = None
        for m in range(micro):
            i = (self.steps * micro + m) % self.n
            b, r = self.batches[i], self.replays[i]
            loss = r.loss(self.twin, b.args, b.kwargs)
            value = loss.detach().float().reshape(())
            total = value if total is None else total + value
            if not torch.isfinite(value):
                self.values.append(total / (m + 1))
                return False
            self.driver.backward(loss if scale == 1.0 else loss * scale)
        self.values.append(total / micro)
        return True

    def finish(self) -> None:
        if not self.diverged:
            _set_rng_state(self.twin, self.rng)
            micro = self.arm.micro
            with torch.no_grad():
                total = 0.0
                for m in range(micro):
                    i = (self.steps * micro + m) % self.n
                    b, r = self.batches[i], self.replays[i]
                    total = total + r.loss(self.twin, b.args, b.kwargs).detach().float()
                self.values.append((total / micro).reshape(()))
        self.curve = [float(v) for v in torch.stack(self.values).cpu()] if self.values else []


def _clipping(setup: Setup, params: list[torch.Tensor]) -> Any:
    """The script's clipping on the copy's params (torch's own function, not our patch of
    it), or None."""
    if setup.clip is None:
        return None
    fn, threshold, ids = setup.clip
    clip = getattr(torch.nn.utils, fn, None)
    while hasattr(clip, "__wrapped__"):
        clip = clip.__wrapped__
    if clip is None:
        return None
    chosen = [params[i] for i in ids if i < len(params)]
    return lambda: clip(chosen, threshold)


def _rng_state(model: torch.nn.Module) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    return torch.get_rng_state(), [(d, torch.cuda.get_rng_state(d)) for d in cuda]


def _set_rng_state(model: torch.nn.Module, state: Any) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for d, s in cuda:
        torch.cuda.set_rng_state(s, d)


def _set_modes(twin: torch.nn.Module, setup: Setup, arm: Arm) -> None:
    """The modes of the script's first captured forward, then the arm's own at step 0."""
    for name, m in twin.named_modules():
        if name in setup.modes:
            m.training = setup.modes[name]
    modules = dict(twin.named_modules())
    for name in arm.train_modules:
        if name in modules:
            modules[name].train(True)
    if arm.eval_from == 0:
        _eval(twin, arm)


def _eval(twin: torch.nn.Module, arm: Arm) -> None:
    modules = dict(twin.named_modules())
    for name in arm.eval_modules:
        if name in modules:
            modules[name].eval()


def _arm_batches(setup: Setup, arm: Arm) -> list[Batch]:
    """The captured batches as this arm replays them: TD506's fix drops the probability op the
    script applied to the output (or swaps softmax for log_softmax before nll_loss)."""
    if arm.swap is not None:  # the recorded loss code, where each batch has one (TD301/302)
        recorded = list(setup.batches) or list(setup.traced)
        return [dataclasses.replace(b, swap=arm.swap) for b in recorded if traced(b)]
    batches = list(setup.batches) or [setup.batch]  # type: ignore[list-item]
    if arm.squash is None or batches[0].squash is None:
        return batches
    dim = batches[0].squash[1]
    new = None if arm.squash == "drop" else ("log_softmax", dim)
    return [dataclasses.replace(b, squash=new) for b in batches]


def _swap_module(twin: torch.nn.Module, setup: Setup, arm: Arm) -> tuple[Any, str, Any] | None:
    """TD506's fix where the model's own nn.Softmax/nn.Sigmoid makes the loss input: that
    module of the copy replaced (Identity, or LogSoftmax before nll_loss). Returns what to put
    back, or None when nothing was swapped (no such module, or swapped already)."""
    if arm.squash is None or setup.batch is None or setup.batch.squash is not None:
        return None
    found = probability_module(setup)
    if found is None:
        raise RuntimeError("no probability op to drop on the copy")
    parent_name, _, attr = found[0].rpartition(".")
    parent = twin.get_submodule(parent_name) if parent_name else twin
    old = getattr(parent, attr)
    if not isinstance(old, torch.nn.Softmax | torch.nn.Sigmoid):
        return None
    new = torch.nn.Identity() if arm.squash == "drop" else torch.nn.LogSoftmax(dim=old.dim)
    parent.add_module(attr, new)  # the copy's own module replaced (add_module: no setattr)
    return parent, attr, old


def _add_group(opt: torch.optim.Optimizer, twin: torch.nn.Module, names: tuple[str, ...]) -> None:
    """The left-out params in a group of their own, with the first group's settings."""
    own = dict(twin.named_parameters())
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    params = [own[n] for n in names if n in own and id(own[n]) not in held]
    if params:
        settings = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        opt.add_param_group({**settings, "params": params})


def _score(twin: torch.nn.Module, setup: Setup, arm: Arm, n: int) -> float:
    """The mean loss over the first n batches at the current weights, with `arm`'s forward,
    leaving the copy as it was (its buffers, BatchNorm's running stats, put back)."""
    buffers = {k: v.detach().clone() for k, v in twin.named_buffers()}
    swapped = _swap_module(twin, setup, arm)
    batches = _arm_batches(setup, arm)[:n]
    torch.manual_seed(1)  # the same dropout draws for both arms
    total = 0.0
    try:
        with torch.no_grad():
            for b in batches:
                value = float(Replay(b).loss(twin, b.args, b.kwargs))
                if not math.isfinite(value):
                    return math.inf
                total += value
    finally:
        if swapped is not None:
            parent, attr, old = swapped
            parent.add_module(attr, old)
        with torch.no_grad():
            for k, v in twin.named_buffers():
                v.copy_(buffers[k])
    return total / max(len(batches), 1)


def _num(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "non-finite"


def _round(v: float) -> float | str:
    return round(v, ROUND) if math.isfinite(v) else "non-finite"

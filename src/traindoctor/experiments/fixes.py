"""The fixes a trial can apply to a copy (experiments/trials.py): one registry, rule code ->
a plan that says how the replay reproduces the bug (as written) and how it applies the fix.

A plan is two sets of replay settings (`Arm`'s fields). Every trial replays the run as written
with *every* reproducible bug of the run in it (the union of the plans' `as_written`), and the
fix arm changes only this finding's part: one fix tried at a time, on the run as it was.
A finding whose fix cannot be applied to a copy gets a reason instead (`NotRun`), said in the
finding as "not run: <reason>".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from ..findings import Finding
from ..rules._optimizer_kinds import SCALE_INVARIANT
from .runner import Setup, base_lr

STEPS = 30  # optimizer steps of each arm a round (trials.py)

_STATS_NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm)
_PROBABILITY_MODULES = {torch.nn.Softmax: "softmax", torch.nn.Sigmoid: "sigmoid"}


@dataclass(frozen=True)
class Arm:
    """How one replay runs. The defaults are a clean loop: zero_grad() every step, the user's
    optimizer groups, the captured modes, the lr of the user's groups, the captured output."""

    carry_grads: tuple[str, ...] = ()  # params whose .grad is never zeroed (TD106)
    extra_params: tuple[str, ...] = ()  # params added to the optimizer in a group (TD103)
    eval_modules: tuple[str, ...] = ()  # modules in eval mode while training ("" = the model)
    eval_from: int = 0  # from this step of the replay on (TD402: the onset, 10 at most)
    train_modules: tuple[str, ...] = ()  # modules put back in train mode (TD402's fix)
    lr_scale: float = 1.0
    # The loss input's probability op: None keeps what the script does; "drop" removes it;
    # "log_softmax" replaces a softmax before nll_loss (TD506).
    squash: str | None = None
    # Micro-batches a step (TD515: the run's gradient accumulation) and the factor each
    # micro-batch loss is multiplied by before its backward (the fix: 1/micro).
    micro: int = 1
    loss_scale: float = 1.0
    # The run's lr per step is replayed (fidelity.py) unless this is set: one lr throughout.
    constant_lr: bool = False
    # TD204 (fix_amp.py): the GradScaler's gradients used still scaled, "clip" (clipped before
    # unscale_), "step" (optimizer.step() without the scaler) or "mixed" (unscale_ after the
    # first micro-batch of the step); None: unscale_ after the last, before clipping.
    scaled: str | None = None
    # A GradScaler's settings (sorted items) where the run's own was not seen (fix_amp.py).
    scaler: tuple[tuple[str, Any], ...] | None = None
    # TD301/TD302 (fix_branch.py): the recorded loss code replayed instead of the captured
    # loss call, with this loss_code.Swap (one op at one line changed; AS_RECORDED: none).
    swap: Any = None

    def merged(self, other: dict[str, Any]) -> Arm:
        return Arm(**{**self.__dict__, **other})


@dataclass(frozen=True)
class Plan:
    fix: str  # what the fix is, in a few words ("zero_grad() each step")
    as_written: dict[str, Any]  # Arm fields that reproduce the bug
    with_fix: dict[str, Any]  # Arm fields that apply the fix (over the as-written arm)
    # Both arms train the same loss function on the same forward: their curves compare. When
    # not (the fix changes the loss input), both final models are scored with the fixed one.
    same_loss: bool = True
    # Arm fields of both arms of this trial only (the lr the run had when it diverged).
    both: dict[str, Any] = dataclasses.field(default_factory=dict)
    # What the trial cannot show, said with its result (TD515 under Adam: scale-invariant).
    note: str | None = None
    # With same_loss False: both final models scored with the loss as written rather than
    # the fixed one (TD301: a clamp dropped changes the loss value; the script's loss is the
    # objective).
    score_as_written: bool = False


@dataclass(frozen=True)
class NotRun:
    fix: str
    reason: str


# Each declared fix in a few words (said in a trial that could not run, too).
FIX_NAMES = {
    "TD106": "zero_grad() each step",
    "TD103": "the missing params added to the optimizer",
    "TD402": "model.train() while training",
    "TD506": "the logits to the loss (no softmax/sigmoid)",
    "TD210": "lr x0.1",
    "TD206": "lr x0.1",
    "TD515": "each micro-batch loss divided by the micro-batches a step",
    "TD109": "every micro-batch loss divided by the micro-batches a step",
}
# Warnings whose fix is tried too (the trials are otherwise for errors only); TD204's is a
# clip before unscale_ that never bit in the run (the trial measures whether it matters).
WARNING_TRIALS = frozenset({"TD515", "TD204"})
MAX_MICRO = 16  # micro-batches a step replayed at most (a trial step costs that many passes)

PlanFn = Callable[[Finding, Setup], "Plan | NotRun"]
FIXES: dict[str, PlanFn] = {}


def fix_for(code: str) -> Callable[[PlanFn], PlanFn]:
    assert code in FIX_NAMES, code

    def register(fn: PlanFn) -> PlanFn:
        FIXES[code] = fn
        return fn

    return register


def resolve(names: tuple[str, ...] | list[str], model: torch.nn.Module, kind: str) -> list[str]:
    """The model's own names for a finding's names (which may carry a watched-model prefix,
    `model.fc.weight`): exact, else the longest own name the finding's name ends with."""
    own = [n for n, _ in model.named_parameters()] if kind == "param" else []
    if kind == "module":
        own = [n for n, _ in model.named_modules()]
    found = []
    for name in names:
        if name in own:
            found.append(name)
            continue
        tails = [n for n in own if n and name.endswith("." + n)]
        if tails:
            found.append(max(tails, key=len))
    return found


def _needs_optimizer(setup: Setup) -> str | None:
    if setup.optimizer_class is None:
        return "no torch optimizer holds the model's params: an update by hand cannot be replayed"
    return None


@fix_for("TD106")
def _zero_grad(finding: Finding, setup: Setup) -> Plan | NotRun:
    fix = FIX_NAMES["TD106"]
    why = _needs_optimizer(setup)
    if why:
        return NotRun(fix, why)
    names = resolve(finding.where.params, setup.model, "param")
    if not names:
        return NotRun(fix, "the params that carried their gradient are not the copy's")
    return Plan(fix, {"carry_grads": tuple(names)}, {"carry_grads": ()})


@fix_for("TD103")
def _add_param_group(finding: Finding, setup: Setup) -> Plan | NotRun:
    fix = FIX_NAMES["TD103"]
    why = _needs_optimizer(setup)
    if why:
        return NotRun(fix, why)
    names = resolve(finding.where.params, setup.model, "param")
    if len(names) != len(finding.where.params):
        return NotRun(fix, "the params left out are not all in the copy (replaced modules?)")
    return Plan(fix, {}, {"extra_params": tuple(names)})


@fix_for("TD402")
def _train_mode(finding: Finding, setup: Setup) -> Plan | NotRun:
    fix = FIX_NAMES["TD402"]
    why = _needs_optimizer(setup)
    if why:
        return NotRun(fix, why)
    ev = finding.evidence
    roots = ev.get("models_in_eval_mode") or []
    names = tuple(ev.get("modules_in_eval") or ())
    model = setup.model
    if roots:
        modules = [model]
        eval_modules: tuple[str, ...] = ("",)
    else:
        resolved = resolve(names, model, "module")
        lookup = dict(model.named_modules())
        modules = [lookup[n] for n in resolved]
        eval_modules = tuple(resolved)
    if not modules:
        return NotRun(fix, "the modules in eval mode are not the copy's")
    norms = [m for top in modules for m in top.modules() if isinstance(m, _STATS_NORMS)]
    if not any(getattr(m, "track_running_stats", False) for m in norms):
        # Dropout off lowers the training loss on the same batches; its harm is on held-out
        # data, which the trial does not have: a curve would say the wrong thing.
        return NotRun(
            fix,
            "no normalization layer with running statistics is in eval mode (Dropout only): "
            "the effect is on held-out data, not on the training loss a trial measures",
        )
    # Eval mode from the step it began in the run (BatchNorm's statistics warmed up that long),
    # within the first third of a round, so that the replay reproduces it.
    onset = ev.get("first_step")
    eval_from = min(max(int(onset) - 1, 0), STEPS // 3) if isinstance(onset, int) else 0
    return Plan(
        fix,
        {"eval_modules": eval_modules, "eval_from": eval_from},
        {"eval_modules": (), "eval_from": 0, "train_modules": eval_modules},
    )


@fix_for("TD506")
def _logits(finding: Finding, setup: Setup) -> Plan | NotRun:
    loss_fn = finding.evidence.get("loss_fn") or ""
    batch = setup.batch
    nll = loss_fn == "nll_loss"
    fix = "log_softmax instead of softmax" if nll else FIX_NAMES["TD506"]
    why = _needs_optimizer(setup)
    if why:
        return NotRun(fix, why)
    if batch is None:
        return NotRun(fix, "no batch was captured")
    if batch.loss_fn != loss_fn:
        return NotRun(fix, f"the replayed loss is {batch.loss_fn}, not this {loss_fn}")
    if batch.squash is None and probability_module(setup) is None:
        return NotRun(
            fix,
            "the probability op is inside forward() code, not a module the copy can drop",
        )
    op = batch.squash[0] if batch.squash else probability_module(setup)[1]  # type: ignore[index]
    if nll and op != "softmax":
        return NotRun(fix, f"a {op} before nll_loss has no log-probability twin to swap in")
    return Plan(fix, {}, {"squash": "log_softmax" if nll else "drop"}, same_loss=False)


def probability_module(setup: Setup) -> tuple[str, str] | None:
    """(name, op) of the nn.Softmax/nn.Sigmoid module whose output is the loss input, when the
    captured output is the loss input itself and the model's last such module makes it."""
    batch = setup.batch
    if batch is None or batch.squash is not None or batch.view is not None or batch.cast:
        return None
    found = [
        (n, op)
        for n, m in setup.model.named_modules()
        for cls, op in _PROBABILITY_MODULES.items()
        if type(m) is cls
    ]
    return found[-1] if len(found) == 1 else None


@fix_for("TD210")
def _lower_lr_divergence(finding: Finding, setup: Setup) -> Plan | NotRun:
    kind = finding.evidence.get("kind")
    if kind != "divergence":
        return NotRun(_lr_words(finding, setup)[0], f"a {kind} is not an lr's to fix")
    return _lower_lr(finding, setup)


@fix_for("TD206")
def _lower_lr(finding: Finding, setup: Setup) -> Plan | NotRun:
    """Both arms at the lr the run had at the finding's step (a schedule may have raised it
    since the start), the fix at a tenth of it."""
    fix, scale = _lr_words(finding, setup)
    why = _needs_optimizer(setup)
    if why:
        return NotRun(fix, why)
    # The lr the run had when it blew up, held: the run's schedule is not replayed (said).
    return Plan(fix, {}, {"lr_scale": 0.1 * scale}, both={"lr_scale": scale, "constant_lr": True})


def _lr_words(finding: Finding, setup: Setup) -> tuple[str, float]:
    """The fix's words with the first group's lr at the finding's step, and that lr over the
    group's base lr (1 when either is unknown)."""
    base = base_lr(setup.groups[0][1]) if setup.groups else None
    lrs = finding.evidence.get("lr") or {}
    at = next((v for _, v in sorted(lrs.items()) if isinstance(v, int | float)), None)
    scale = at / base if at and base else 1.0
    lr = at or base
    return FIX_NAMES["TD210"] + (f" ({lr:.3g} -> {lr * 0.1:.3g})" if lr else ""), scale


@fix_for("TD515")
def _divide_accumulated(finding: Finding, setup: Setup) -> Plan | NotRun:
    """As written: k micro-batch losses summed into each optimizer step (k measured by TD515:
    backward passes a step); the fix divides each by k. The captured batches (one from each
    of the run's first steps) are replayed in groups of k."""
    k = finding.evidence.get("micro_batches")
    fix = f"loss / {k} on each micro-batch" if isinstance(k, int) else FIX_NAMES["TD515"]
    why = _needs_optimizer(setup)
    if why:
        return NotRun(fix, why)
    if not isinstance(k, int) or k < 2:
        return NotRun(fix, "the micro-batches a step were not measured")
    if k > MAX_MICRO:
        return NotRun(fix, f"{k} micro-batches a step: over the {MAX_MICRO} a trial replays")
    if finding.evidence.get("divided_by_own_count_steps"):
        # Each micro-batch divided by its own target count: the replayed call is a mean, and
        # the run's count-normalized sum is not what it reproduces.
        return NotRun(fix, "each micro-batch loss is divided by its own target count")
    return Plan(fix, {"micro": k}, {"loss_scale": 1.0 / k}, note=_scale_note(setup))


def _scale_note(setup: Setup) -> str | None:
    """What a loss-scale fix can change under an Adam-like optimizer, or None."""
    name = getattr(setup.optimizer_class, "__name__", "")
    if name not in SCALE_INVARIANT:
        return None
    # Adam-like updates divide the gradient by its own running size: scaling the loss by 1/k
    # leaves them as they were but for the clipping threshold and epsilon.
    changes = "the clipping and the epsilon only" if setup.clip else "the epsilon only"
    return f"{name} is invariant to the loss scale: the fix changes {changes}"


COMMON_SHARE = 0.9  # TD109's trial replays one scale: the run's on this share of passes at least


@fix_for("TD109")
def _same_scale(finding: Finding, setup: Setup) -> Plan | NotRun:
    """Where it fits: an accumulation run (k micro-batches a step, as captured) whose passes
    are scaled by one constant c but for a few (a `loss / k` in a first-batch debug block),
    and 1/k among the run's factors. As written: every pass times c (the few odd passes are
    not replayed); the fix: every pass times 1/k."""
    k = setup.micro_batches
    fix = f"loss / {k} on every micro-batch" if k >= 2 else FIX_NAMES["TD109"]
    why = _needs_optimizer(setup)
    if why:
        return NotRun(fix, why)
    if k < 2:
        return NotRun(fix, "one forward a step: no accumulation window to divide over")
    if k > MAX_MICRO:
        return NotRun(fix, f"{k} micro-batches a step: over the {MAX_MICRO} a trial replays")
    try:
        counts = {
            float(Fraction(str(s))): int(n)
            for s, n in (finding.evidence.get("factors") or {}).items()
        }
    except (ValueError, ZeroDivisionError, TypeError):
        return NotRun(fix, "the run's loss scales were not measured")
    total = sum(counts.values())
    if not counts or total <= 0:
        return NotRun(fix, "the run's loss scales were not measured")
    common = max(counts, key=lambda f: counts[f])
    if counts[common] < COMMON_SHARE * total:
        return NotRun(
            fix, f"the scale differs on {total - counts[common]} of {total} passes: not replayed"
        )
    if not any(abs(f * k - 1.0) < 1e-6 for f in counts):
        return NotRun(fix, f"no pass is divided by the {k} micro-batches a step")
    if abs(common * k - 1.0) < 1e-6:
        return NotRun(fix, f"most passes are divided by {k} already: only the odd ones differ")
    odd = total - counts[common]
    notes = [f"as written every pass is scaled by {common:g} ({odd} of {total} passes were not)"]
    notes += [n for n in (_scale_note(setup),) if n]
    return Plan(
        fix, {"micro": k, "loss_scale": common}, {"loss_scale": 1.0 / k}, note="; ".join(notes)
    )


def plan_for(finding: Finding, setup: Setup) -> Plan | NotRun | None:
    """The finding's plan, its reason for none, or None when no fix is declared for it."""
    fn = FIXES.get(finding.code)
    return fn(finding, setup) if fn is not None else None

"""Doctor: attach probes, observe steps, diagnose with the rules, write the report."""

from __future__ import annotations

import atexit
import contextlib
import numbers
import os
import sys
import time
import weakref
from collections.abc import Iterable, Iterator
from itertools import chain
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import Any

import torch

from . import _hooks, _patches, config, distributed
from ._guard import Guard
from ._release import DroppedOptimizer, RunModels, WeakList, WeakModels, WeakSlots, scrub
from ._validate import check_options
from .budget import Budget
from .bus import Bus, Event
from .diagnosis import diagnose, fold, unavailable
from .errors import StopTraining, UsageError
from .findings import Finding
from .integrations import trackers
from .options import Options
from .outcome import record_outcome
from .probes import default_probes
from .probes.base import AttachContext, Probe, Recorder, RunContext
from .probes.loss_targets import watch_loss_targets
from .report import notebook, publish
from .report.model import Report
from .rules._registry import Rule, select
from .run_state import RunClock, RunState
from .scaler_find import ScalerFinder
from .steps import StepDriver
from .timeline import Timeline
from .timeline_store import TimelineWriter
from .unwatched_steps import UnwatchedSteps

# Rules that can judge a run that never attached (it failed in setup).
SETUP_TIME_RULES = ("TD501", "TD502", "TD511")
# Events that rules of SETUP_TIME_RULES judge on a run that never attached.
SETUP_TIME_EVENTS = ("grad_on_non_float", "loss_targets_out_of_range")

# Open doctors, oldest first: `evaluate()` finds the one watching the model it validates.
_OPEN: list[weakref.ref[Doctor]] = []


def open_doctors() -> list[Doctor]:
    """The attached doctors that are not closed yet, oldest first."""
    return [d for r in _OPEN if (d := r()) is not None and not d.state.closed]


def _unclosed_at_exit() -> None:
    """At interpreter exit: a `td.watch()` never closed diagnosed nothing. Its steps since the
    last flush go to disk, and one line says so and how to get the report; no diagnosis runs
    here (other processes of a job, the user's own exit handlers, may be gone)."""
    for doc in open_doctors():
        if doc.mode != "watch" or doc.framework != "plain":
            continue  # the integrations close their own runs
        with contextlib.suppress(Exception):
            doc.timeline.stream.flush()
            sys.stderr.write(
                f"traindoctor: the run in {doc.run_dir} was not closed, so nothing was "
                "diagnosed: call doc.close() at the end (or use `with td.watch(...) as doc:`); "
                f"`traindoctor report {doc.run_dir}` diagnoses what it recorded\n"
            )


atexit.register(_unclosed_at_exit)


class Doctor:
    """Watches one training run. Create it with `traindoctor.watch(...)`."""

    def __init__(
        self,
        *,
        out_dir: str | Path = "traindoctor-runs",
        run_id: str | None = None,
        budget: float = 0.03,
        mode: str = "watch",
        framework: str = "plain",
        max_steps: int | None = None,
        console: bool = True,
        select_codes: Iterable[str] = (),
        ignore_codes: Iterable[str] = (),
        rules: list[Rule] | None = None,
        probes: list[Probe] | None = None,
        script: str | None = None,
        options: Options | None = None,
    ) -> None:
        built_from = time.perf_counter()  # building the Doctor is attach's cost too
        # The entry points pass `options`, checked; Doctor(...) is public too, with the same
        # one-line errors (options.py). out_dir is not checked here: the report writer says
        # when it cannot write there.
        if options is None:
            options = Options.checked(
                "Doctor",
                budget=budget,
                max_steps=max_steps,
                mode=mode,
                console=console,
                select=select_codes,
                ignore=ignore_codes,
            ).but(out_dir=out_dir, run_id=run_id)
        check_options("Doctor", framework=framework)
        out_dir, run_id, budget = options.out_dir, options.run_id, options.budget
        mode, max_steps, console = options.mode, options.max_steps, options.console
        select_codes, ignore_codes = options.select, options.ignore
        self.budget = Budget(budget)
        self._clock = RunClock(self.budget.structural_steps)
        self.state: RunState = self._clock  # read-only for everyone but this class
        self.timeline = Timeline()
        self.rec = Recorder(self.timeline)
        self.guard = Guard(lambda: self._clock.step)
        self.bus = Bus(self.guard, self.state)
        # What probes and integrations may use (the watched objects once attached).
        self.run = RunContext(
            state=self.state, guard=self.guard, budget=self.budget, rec=self.rec, bus=self.bus
        )
        self.mode = mode
        self.framework = framework
        self.console = console
        self.out_dir = Path(out_dir)
        self._script = script
        self._run_id_given = run_id is not None
        # A rank of a distributed job (torchrun's environment; else torch.distributed, looked
        # at again at attach): one run id for the job, this rank's files under ranks/rank<N>/.
        self.dist = distributed.detect()
        self.run_id = run_id or self._default_run_id()
        self.job_report: Report | None = None  # the job's merged report, where this rank wrote it
        # Where the timeline streams: a relative out_dir belongs where the run started (a
        # script may chdir before attach; `traindoctor run` writes the report there too).
        self._stream_path = Path(os.path.abspath(self.run_dir / "timeline.jsonl"))
        if rules is None:
            # [tool.traindoctor] applies wherever a Doctor picks its own rules (the framework
            # callbacks), as it does for watch() and `traindoctor run`, which pass theirs.
            settings = config.for_watch(tuple(select_codes), tuple(ignore_codes))
            self.rules = settings.rules()
            self.timeline.facts["config"] = settings.describe()
        else:
            self.rules = select(rules, select_codes, ignore_codes)
        self.probes: list[Probe] = probes if probes is not None else default_probes()
        self.bus.add_probes(self.probes)
        # The run state keeps the model's last training output (probes publish it).
        self.bus.subscribe(Event.MODEL_OUTPUT, self._clock.set_model_output, "model output")
        # Findings posted to the script's W&B / TensorBoard / MLflow (a bus listener).
        trackers.install(self.run, self.timeline, options.export)
        self._by_name: dict[str, Probe] | None = None
        self.models: dict[str, torch.nn.Module] = {}
        self.optimizers: list[torch.optim.Optimizer] = []
        # Zero-code: optimizers built after attach (a later phase: fine-tuning, a student) and
        # their steps since the primary's last; one that steps twice in a row while the
        # primary is idle numbers the steps from then on (self._primary).
        self._late: dict[int, int] = {}
        self._primary: weakref.ref[torch.optim.Optimizer] | None = None
        # Zero-code mode holds the watched models and optimizers weakly (a sweep's trials are
        # freed when the script drops them, _release.py): id -> the weakref whose callback
        # purges what the run's caches keep of a dropped one (_dropped).
        self._weak = False
        self._drop_refs: dict[int, weakref.ref] = {}
        # optimizer -> the watched models whose params it holds, kept while it lives (_anchor)
        self._anchors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._first_opt: Any = None  # the first optimizer (a weakref in zero-code mode)
        self.created_at = self.run.created_at  # id(optimizer) -> source line that built it
        self.findings: list[Finding] = []
        self.report: Report | None = None
        self._handles: list[Any] = []
        self._watched_scaler: Any = None
        self._unwatched: UnwatchedSteps | None = None
        self._scaler_finder: ScalerFinder | None = None  # watch() without scaler=
        self._listening = False
        self._pickles_clean = False  # our hooks are left out of pickles while attached
        # The step boundary: backward, optimizer steps, scaler updates, updates by hand.
        self._steps = StepDriver(
            self.run, self._clock, self.diagnose, self._structure_check, max_steps, self.fold
        )
        self.timeline.facts.update(
            {"mode": mode, "framework": framework, "run_id": self.run_id, "script": script}
        )
        self.budget.governor.attach_s += time.perf_counter() - built_from

    def _default_run_id(self) -> str:
        if self.dist is not None:
            # A second job of this process (another fit()) gets its own: `<id>-2`.
            job = distributed.job_run_id(self._script, self.dist)
            return distributed.unused_by_this_process(job, self.out_dir, self.dist)
        return _new_run_id(self._script)

    @property
    def run_dir(self) -> Path:
        """This run's directory: out_dir/run_id, or in a distributed job this rank's own
        directory inside the job's, out_dir/run_id/ranks/rank<N>."""
        job_dir = self.out_dir / self.run_id
        return job_dir if self.dist is None else distributed.rank_dir(job_dir, self.dist.rank)

    def _find_rank(self) -> None:
        """At attach: a job torchrun's environment did not name (mp.spawn) is known from the
        initialized process group by now. Writes who this rank is beside its timeline."""
        if self.dist is None and self.timeline.stream is None:
            self.dist = distributed.detect()
            if self.dist is not None:
                if not self._run_id_given:
                    self.run_id = self._default_run_id()
                    self.timeline.facts["run_id"] = self.run_id
                self._stream_path = Path(os.path.abspath(self.run_dir / "timeline.jsonl"))
        if self.dist is not None:
            from .distributed.merge import write_rank_meta

            write_rank_meta(self._stream_path.parent, self.dist, self.run_id)

    # -- attaching ------------------------------------------------------------------------
    def attach(
        self,
        models: dict[str, torch.nn.Module],
        optimizers: list[torch.optim.Optimizer],
        scaler: Any = None,
    ) -> None:
        """Start watching these objects. Called once by `watch()`, lazily in zero-code mode."""
        attach_started = time.perf_counter()  # attach's time is reported (governor.py)
        # torch.compile's wrapper is watched through the module it wraps: names without
        # `_orig_mod.`, and the model is known to run compiled from the start.
        compile_watch = self._steps.compile_watch
        self._weak = self.mode == "zero-code"
        self.models = self._holding({p: compile_watch.unwrap(p, m) for p, m in models.items()})
        self.optimizers = WeakSlots(optimizers) if self._weak else list(optimizers)
        self._first_opt = _first_ref(self.optimizers)
        self._watch_drops(self.models.values(), self.optimizers)
        names: dict[int, str] = {}
        for prefix, model in self.models.items():
            for name, p in model.named_parameters():
                names.setdefault(id(p), f"{prefix}{name}")
        ctx = self.run.attached = AttachContext(
            run=self.run,
            models=self.models,
            optimizers=self.optimizers,
            scaler=scaler,
            mode=self.mode,
            param_names=names,
            compiled=compile_watch.compiled,
        )
        self._anchor()
        self._clock.mark_attached()
        self.guard.call("ranks", self._find_rank)
        if self.timeline.stream is None:
            # The timeline goes to disk as the run goes: a killed run keeps what it recorded.
            self.timeline.stream = TimelineWriter(self.timeline, self._stream_path)
        self.guard.call("compile watch", compile_watch.attach, self.models)
        self._steps.note_compiled()
        self._note_models()
        self.timeline.facts["scaler"] = type(scaler).__name__ if scaler is not None else None
        if not self._pickles_clean:
            self.guard.call("hooks out of pickles", _hooks.strip_hooks_from_pickles)
            self._pickles_clean = True
        for probe in self.probes:
            self.guard.call(f"probe {probe.name}", probe.attach, ctx, self.rec)
        # Class targets out of range, counted before the loss runs (TD511; zero-code mode
        # started it with the script, a second hold on the same watch).
        self._handles.append(watch_loss_targets(self.run))
        for opt in self.optimizers:
            self._hook_optimizer(opt)
        if scaler is not None:
            self._wrap_scaler(scaler)
        elif self.mode == "watch" and self._scaler_finder is None:
            self._find_scaler()
        if self.mode == "watch" and not self.optimizers:
            # watch(model) without its optimizer: the loop's torch optimizer that holds the
            # watched params is adopted at its first step (else no step ever closes and the
            # run reads as "never updated").
            self._steps.hand.adopt = self._adopt_optimizer
        self.guard.call("hand steps", self._steps.hand.start)
        # Steps of optimizers not given to watch (a later student's, a test-time adaptation's):
        # TD105 tells them from no step at all.
        if self._unwatched is None:
            self._unwatched = UnwatchedSteps(self.run)
        self.guard.call("unwatched steps", self._unwatched.start)
        if not self._listening:
            _patches.add_backward_listener(self.observe_backward, self._steps.after_backward)
            self._listening = True
        self._steps.prepare_step()
        self._structure_check()
        # The run directory and what attach learnt, on disk before the first step (an
        # out-of-memory kill in the first forward still leaves a run to report on).
        self.guard.call("timeline stream", self.timeline.stream.flush)
        _OPEN.append(weakref.ref(self))
        # In a Jupyter cell: a live status line (a bus listener; nothing elsewhere).
        self.guard.call("notebook status", notebook.watch_live, self)
        self.budget.governor.attached(time.perf_counter() - attach_started)

    def add_optimizer(self, opt: torch.optim.Optimizer) -> None:
        """Zero-code mode: an optimizer that appeared after attach."""
        if self.context is None or any(o is opt for o in self.optimizers):
            return
        # Copy-on-write: a probe iterating ctx.optimizers on another thread keeps the old list.
        if isinstance(self.optimizers, WeakSlots):
            self.optimizers = self.optimizers.plus(opt)
        else:
            self.optimizers = [*self.optimizers, opt]
        self.context.optimizers = self.optimizers
        self._first_opt = _first_ref(self.optimizers)
        self._watch_drops((), [opt])
        self._anchor()
        self._late[id(opt)] = 0
        self._hook_optimizer(opt)
        optim_probe = self.probe("optim")
        if optim_probe is not None:
            self.guard.call("probe optim", optim_probe.describe, self.rec)

    def add_models(self, models: Iterable[torch.nn.Module]) -> list[str]:
        """Zero-code mode: models that first train after attach (a later phase: the student
        after its teacher, a classifier after pretraining). Each gets a prefix of its own
        (its class name, numbered when taken); its params are named and inventoried from now
        on, so the rules read them as the first models' (the probes that read
        `named_params()` see them at their next sampled step). Returns the prefixes given."""
        ctx = self.context
        if ctx is None:
            return []
        watched = {id(sub) for m in self.models.values() for sub in m.modules()}
        # (a dropped model's prefix is not given again: its names stay in the facts)
        taken = {*self.models, *(f"{k}." for k in self.timeline.facts.get("models", {}))}
        added: dict[str, torch.nn.Module] = {}
        for model in models:
            if id(model) in watched:
                continue
            watched.update(id(sub) for sub in model.modules())
            base, k = type(model).__name__, 1
            prefix = f"{base}."
            while prefix in taken or prefix in added:
                k += 1
                prefix = f"{base}{k}."
            added[prefix] = model
        if not added:
            return []
        names = ctx.param_names
        for prefix, model in added.items():
            for name, p in model.named_parameters():
                names.setdefault(id(p), f"{prefix}{name}")
        # Copy-on-write: a probe iterating ctx.models on another thread (two threads training
        # at once) keeps the dict it holds; inserting into it raised "dictionary changed size".
        self.models = ctx.models = self._holding({**dict(self.models.items()), **added})
        self._watch_drops(added.values(), ())
        self._anchor()
        self._note_models()
        for probe in self.probes:
            if hasattr(probe, "models_added"):
                self.guard.call(f"probe {probe.name}", probe.models_added, added, self.rec)
        self._structure_check()
        # The new phase's first steps are sampled, as the run's first ones are: its models'
        # gradients and updates are measured there, whatever the schedule's interval.
        step = self._clock.step
        self.budget.sample_steps(range(step + 1, step + 1 + self.budget.structural_steps))
        return list(added)

    def _note_models(self) -> None:
        """The `models` fact: each watched model's name and class (at attach, and again when a
        later phase adds models)."""
        models = {(p.rstrip(".") or "<model>"): type(m).__name__ for p, m in self.models.items()}
        if self._weak:  # a dropped model keeps its name: findings about it still say it
            models = {**self.timeline.facts.get("models", {}), **models}
        self.timeline.facts["models"] = models

    def _holding(self, models: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
        """How the run holds its models: weakly in zero-code mode (but our own LooseTensors)."""
        if not self._weak:
            return models
        return RunModels(models, strong=_ours)

    def _watch_drops(self, models: Iterable[Any], optimizers: Iterable[Any]) -> None:
        """Zero-code mode: a callback when one of these models or optimizers is freed."""
        if not self._weak:
            return
        for kind, objs in (("model", models), ("optimizer", optimizers)):
            for obj in objs:
                key = id(obj)
                if key in self._drop_refs or _ours(obj):
                    continue
                with contextlib.suppress(TypeError):  # (not weakly referable: held as is)
                    self._drop_refs[key] = weakref.ref(obj, _on_drop(self, kind, key))

    def _anchor(self) -> None:
        """Zero-code mode: each watched optimizer keeps the watched models whose params it
        holds alive while it lives. A model is let go once the script holds neither it nor an
        optimizer over its params (a sweep's trial: `del model, opt`); one rebound while its
        optimizer still steps its params (a scripted module sharing them, `functional_call`
        on a new template) stays watched, as the optimizer's params stay named."""
        ctx = self.run.attached
        if not self._weak or ctx is None or not isinstance(self.optimizers, WeakSlots):
            return
        names = ctx.param_names
        models = dict(self.models.items())
        prefixes = {p[:-1]: m for p, m in models.items() if p}
        root = models.get("")
        for opt in self.optimizers.live():
            params = chain.from_iterable(g["params"] for g in opt.param_groups)
            if len(models) == 1:  # the usual run: any named param (stops at the first)
                held_any = any(map(names.__contains__, map(id, params)))
                kept = list(models.values()) if held_any else []
            else:  # the models whose names head the optimizer's params' names
                held = set(map(names.get, map(id, params)))
                held.discard(None)
                heads = set(map(_HEAD, map(_PARTITION, held)))
                kept = [m for p, m in prefixes.items() if p in heads]
                if root is not None and not heads.issubset(prefixes):
                    kept.append(root)
            with contextlib.suppress(TypeError):  # (an optimizer that cannot be a dict key)
                self._anchors[opt] = tuple(kept)

    def _dropped(self, kind: str, key: int) -> None:
        """A watched model or optimizer the script dropped was freed (weakref callback: it
        runs where the last reference went, so it only forgets). What the run's caches held
        of it goes: the named-params walk, names of tensors no one holds now (a later trial's
        tensors may reuse their ids), a dropped optimizer's index entries; the probes with
        `models_dropped` forget theirs. Findings about it keep what the timeline recorded."""
        self._drop_refs.pop(key, None)
        ctx = self.run.attached
        if ctx is None or self._clock.closed:
            return
        if kind == "optimizer":
            self._late.pop(key, None)
            self.created_at.pop(key, None)
            stats = ctx.__dict__.get("_param_stats")
            if stats is not None:
                stats.forget(key)
        else:
            # (copy-on-write: a reader keeps the dict it holds)
            self.models = ctx.models = self._holding(dict(self.models.items()))
            ctx.forget_params()
        # (the callback runs before the dropped object's own references go: its tensors are
        # alive now, and their ids free for a later trial's tensors soon)
        live = {id(p) for _, p in ctx.named_params()}
        live.update(id(p) for o in self.optimizers for g in o.param_groups for p in g["params"])
        # (copy-on-write: a probe iterating the names keeps the dict it holds)
        ctx.param_names = {k: v for k, v in ctx.param_names.items() if k in live}
        if kind == "optimizer":
            return
        prefixes = [p for p in self.timeline.facts.get("models", {}) if p not in self.models]
        for probe in self.probes:
            if hasattr(probe, "models_dropped"):
                self.guard.call(f"probe {probe.name}", probe.models_dropped, prefixes, self.rec)

    def _adopt_optimizer(self, opt: torch.optim.Optimizer) -> None:
        """A torch optimizer holding watched params stepped, none was given to watch(): it is
        the run's. The first one adopted also closes the step its step() just ended (its own
        hooks are on from the next step)."""
        first = not self.optimizers
        self.add_optimizer(opt)
        if first and self.optimizers and not self._clock.closed:
            self._steps.optimizer_step(opt, False, True)
            self._steps.end_step()

    @property
    def max_steps(self) -> int | None:
        """Stop the run (StopTraining) after this many steps; None: never."""
        return self._steps.max_steps

    @max_steps.setter
    def max_steps(self, value: int | None) -> None:
        self._steps.max_steps = value

    @property
    def step(self) -> int:
        """The open step: optimizer steps completed so far + 1."""
        return self._clock.step

    @property
    def context(self) -> AttachContext | None:
        """The watched objects and the run's services, once attached (None before)."""
        return self.run.attached

    @property
    def scaler(self) -> Any:
        """The GradScaler the run uses, once known (given to watch() or seen scaling)."""
        ctx = self.run.attached
        return ctx.scaler if ctx is not None else None

    def use_scaler(self, scaler: Any) -> None:
        """A GradScaler found after attach (zero-code mode sees it scale the first loss)."""
        ctx = self.run.attached
        if ctx is not None and ctx.scaler is None:
            ctx.scaler = scaler

    def _hook_optimizer(self, opt: torch.optim.Optimizer) -> None:
        self._handles.append(opt.register_step_pre_hook(self.optimizer_step_hook(opt, pre=True)))
        self._handles.append(opt.register_step_post_hook(self.optimizer_step_hook(opt, pre=False)))

    def optimizer_step_hook(self, opt: torch.optim.Optimizer, pre: bool):  # noqa: ANN201
        """The hook watching `opt.step()` (before it if `pre`): an extension point, a subclass
        may wrap it (Lightning's defers the pre-step until its closure has run backward)."""

        def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            first = self._first_opt
            if self._clock.closed or first is None:
                return
            # Runs twice a step: _primary_for's usual case (no later phase), Guard.call and
            # Budget.spend written out (three frames less per call, the same work).
            if self._primary is None and not self._late:
                primary = optimizer is first()
            else:
                primary = optimizer is self._primary_for(optimizer, pre)
            t0 = _clock()
            guard = self.guard
            try:
                # One guarded call per hook; each probe is guarded again by the bus.
                if _OPT_STEP not in guard.disabled:
                    try:
                        self._steps.optimizer_step(optimizer, pre, primary)
                    except StopTraining:
                        raise
                    except Exception as exc:  # noqa: BLE001  (isolation is the point)
                        guard.record(_OPT_STEP, exc)
            finally:
                spent = _clock() - t0
                budget = self.budget
                budget.spent_total += spent
                budget.step_spent += spent
                budget.step_calls += 1
            if primary and not pre:
                self._steps.end_step()

        return hook

    def _primary_for(self, optimizer: Any, pre: bool) -> Any:
        """The optimizer whose step() closes a step. The first watched one, until an optimizer
        built after attach (zero-code: a second phase with a new optimizer) steps twice while
        the first stays idle: the first phase is over, the new one numbers the steps (its
        backward passes and updates were all lumped into one step). Counted in steps, never
        in time; a GAN's second optimizer steps between the first's and never takes over."""
        first = self._first_opt()  # (None: the first one was dropped)
        current = self._primary() if self._primary is not None else None
        if current is None:
            current = first
        late = self._late
        if current is not first and optimizer is first:
            # The first phase's optimizer steps again: not a phase that ended (a critic stepped
            # n times per generator step). It numbers the steps again, for good.
            self._primary = None
            late.clear()
            return optimizer
        if not late or optimizer is current:
            if not pre:
                for k in late:
                    late[k] = 0
            return current
        n = late.get(id(optimizer))
        if n is None:
            return current
        if pre and n >= 2:
            self._primary = weakref.ref(optimizer)
            for k in late:
                late[k] = 0
            return optimizer
        if not pre:
            late[id(optimizer)] = n + 1
        return current

    def _wrap_scaler(self, scaler: Any) -> None:
        """Watch a GradScaler instance: map scaled losses back, and close steps it skips."""
        _patches.watch_scaler(scaler, self.scaler_updated)
        self._watched_scaler = scaler

    def _find_scaler(self) -> None:
        """watch() without scaler=: the run's GradScaler found as it is used (scaler_find.py)."""
        self._scaler_finder = ScalerFinder(
            lambda: self.run.attached, self._adopt_scaler, self.scaler_updated, self.guard
        )
        self._scaler_finder.start()

    def _adopt_scaler(self, scaler: Any) -> None:
        ctx = self.run.attached
        if ctx is not None:
            ctx.scaler = scaler
            self.timeline.facts["scaler"] = type(scaler).__name__

    def scaler_updated(self) -> None:
        """A GradScaler's update() ran: the step boundary, also when the scaler skipped
        optimizer.step() (inf/NaN gradients). For integrations that watch a scaler's update
        themselves (zero-code mode); a scaler given to watch() is watched already."""
        self._steps.scaler_updated()

    def observe_backward(self, root: torch.Tensor, loss: torch.Tensor) -> None:
        """A backward pass is about to run. Called by the backward patch once listening; an
        integration that attaches during a backward (zero-code mode) hands that one over."""
        self._steps.observe_backward(root, loss)

    def _structure_check(self) -> None:
        optim_probe = self.probe("optim")
        if optim_probe is not None and self.run.attached is not None:
            self.guard.call("probe optim", optim_probe.describe, self.rec)

    def probe(self, name: str) -> Any:
        """The probe named `name` (None if not running): for integrations that hand a probe
        what only the framework knows (a region, an evaluation's counts)."""
        by_name = self._by_name
        if by_name is None:
            by_name = self._by_name = {}
            for p in self.probes:
                by_name.setdefault(p.name, p)
        return by_name.get(name)

    def note_model_output(self, facts: dict[str, Any] | None) -> None:
        """The watched model's training output, seen by an integration's own forward hook."""
        self.bus.emit(Event.MODEL_OUTPUT, facts)

    # -- public API -----------------------------------------------------------------------
    def log(
        self,
        loss: torch.Tensor | float | None = None,
        parts: dict[str, torch.Tensor | float] | None = None,
        **metrics: torch.Tensor | float,
    ) -> None:
        """Record the training loss (or, inside `validating()`, the validation loss), optional
        loss parts and metrics. Tensors are read back in batches: no host sync here."""
        _check_value("loss", loss, allow_none=True)
        if parts is not None and not isinstance(parts, dict):
            raise UsageError(
                f"doc.log(parts=...) takes a dict of name -> tensor, got {type(parts).__name__}; "
                "pass e.g. parts={'box': box_loss, 'cls': cls_loss}"
            )
        for k, v in (parts or {}).items():
            _check_value(f"parts[{k!r}]", v)
        for k, v in metrics.items():
            _check_value(k, v)
        if self._clock.closed:
            return
        t0 = time.perf_counter()
        try:
            validating = self._clock.validating
            step = self._log_step(loss)
            self.bus.emit(Event.LOG, step, loss, parts, metrics, validating, self.rec)
        finally:
            self.budget.spend(time.perf_counter() - t0)

    def _log_step(self, loss: Any) -> int:
        """The step a logged training loss belongs to.

        `loss.backward(); optimizer.step(); doc.log(loss=loss)` logs after the step closed:
        the loss belongs to the step whose backward produced it. A tensor sharing storage with
        the last backward's loss (itself or a .detach()) is matched exactly; a plain number
        logged before the next backward is given to the previous step.
        """
        if self._clock.validating:
            return self.step
        ref, step = self._steps.last_backward
        if isinstance(loss, torch.Tensor):
            last = ref() if ref is not None else None
            if last is not None and loss.numel() == 1 and loss.data_ptr() == last.data_ptr():
                return step
            return self.step
        if loss is not None and self._steps.backward_since_step == 0 and step == self.step - 1:
            return step
        return self.step

    @contextlib.contextmanager
    def validating(self, model: torch.nn.Module | None = None) -> Iterator[Doctor]:
        """Evaluate safely: eval mode and `torch.no_grad()` (not inference_mode, whose tensors
        cannot be trained later); each module's previous mode is restored afterwards."""
        if model is not None and not isinstance(model, torch.nn.Module):
            raise UsageError(
                f"doc.validating(model) takes a torch.nn.Module, got {type(model).__name__}; "
                "pass the model you evaluate, e.g. `with doc.validating(model):`"
            )
        targets = [model] if model is not None else list(self.models.values())
        modes = [(m, m.training) for t in targets for m in t.modules()]
        self._clock.set_switching_modes(True)
        try:
            for t in targets:
                t.eval()
        finally:
            self._clock.set_switching_modes(False)
        self.begin_validation(model)
        try:
            with torch.no_grad():
                yield self
        finally:
            self.end_validation()
            for m, was_training in modes:
                m.training = was_training

    def begin_validation(self, model: torch.nn.Module | None = None) -> None:
        """A validation starts whose loop the caller runs and whose modes it sets itself (a
        framework's evaluation loop): what `validating()` does, minus eval() and no_grad.
        Pair it with `end_validation()`."""
        index = self._clock.begin_validation()
        self.timeline.event(self.step, "validation", index=index)
        if not self._clock.closed:
            self.bus.emit(Event.VALIDATION_BEGIN, self.step, model, self.rec)

    def end_validation(self) -> None:
        """The validation begun by `begin_validation()` ended."""
        self._clock.end_validation()
        if not self._clock.closed:
            self.bus.emit(Event.VALIDATION_END, self.step, self.rec)

    def diagnose(self) -> list[Finding]:
        """Run every rule over the timeline; a rule that raises is recorded, never propagated."""
        if self.run.attached is None:
            # Nothing attached (the script failed in its setup): only the rules that judge
            # setup-time facts can speak (a requires_grad request on 4-bit params, TD501).
            rules = [r for r in self.rules if r.code in SETUP_TIME_RULES]
            if not any(self.timeline.events(k) for k in SETUP_TIME_EVENTS) or not rules:
                self.findings = []
                return self.findings
            self.timeline.facts.setdefault("models", {})
            self.findings = diagnose(self.timeline, rules, self.guard, self.findings)
            return self.findings
        # What failed probes would have written: the rules reading it are not judged.
        self.timeline.facts.update(unavailable(self.probes, self.guard.disabled))
        self.findings = diagnose(self.timeline, self.rules, self.guard, self.findings)
        self.bus.emit(Event.DIAGNOSIS_MADE, self.findings)
        return self.findings

    def fold(self) -> None:
        """The incremental rules read the records since their last pass, judging nothing
        (diagnosis.fold): none is thinned from memory before they have read it."""
        if self.run.attached is not None:
            fold(self.timeline, self.rules, self.guard)

    def close(self, exc: BaseException | None = None) -> Report:
        """Detach everything, diagnose the whole run and write the report. Idempotent."""
        if self.report is not None:
            return self.report
        self.guard.resume()  # probes paused in a stretch without a step (steps.py) flush too
        hand = self._steps.hand
        if hand.active and not self._clock.closed:
            # The last update by hand (after the last backward) closes the last step.
            found = self.guard.call("hand steps", hand.take)
            if found:
                # The run is over: no --max-steps stop to record for this one.
                self.max_steps, max_steps = None, self.max_steps
                self.guard.call("hand steps", self._steps.hand_step, *found)
                self.max_steps = max_steps
        self._clock.mark_closed()
        self.guard.call(
            "outcome",
            record_outcome,
            self.timeline,
            exc,
            self.step,
            self.run.attached is not None,
            self.budget,
        )
        self.guard.call("detach", self._detach)
        self._steps.readback()
        capture = self.probe("capture")
        if capture is not None and self.run.attached is not None:
            # Experiments on a copy (check, TRAINDOCTOR_EXPERIMENTS=1), every hook detached.
            self.guard.call("probe capture", capture.run_experiments, self.step, self.rec)
        self.guard.call("diagnose", self.diagnose)
        if capture is not None and self.run.attached is not None and self.findings:
            # Fix trials of the error findings on a copy (experiments/trials.py), when on.
            tried = self.guard.call("fix trials", capture.run_trials, self.findings)
            self.findings = tried if tried is not None else self.findings
        self.report = Report(
            findings=self.findings,
            steps=self.timeline.last_step,
            framework=self.framework,
            outcome={
                **self.timeline.facts.get("outcome", {}),
                "skipped_rules": self.timeline.facts.get("skipped_rules", []),
            },
            internal_errors=[e.to_dict() for e in self.guard.errors],
            run_dir=self.run_dir,
            timeline=self.timeline,
        )
        if self.dist is None:
            publish(self.report, self.guard, self.console)
            self._after_report()
            return self.report
        self.report.rank, self.report.world_size = self.dist.rank, self.dist.world_size
        publish(self.report, self.guard, console=False)
        errors = len(self.guard.errors)
        self.guard.call("merge ranks", self._merge_ranks)
        if len(self.guard.errors) > errors:
            # The merge failed (recorded): this rank's own report says so.
            self.report.internal_errors = [e.to_dict() for e in self.guard.errors]
            publish(self.report, self.guard, console=False)
        self._after_report()
        return self.report

    def _after_report(self) -> None:
        """The report's listeners (trackers), then the release: an internal error either
        records after the report was written goes into the run directory's report too
        (findings.json, report.md; the console summary is already printed)."""
        errors = len(self.guard.errors)
        self.bus.emit(Event.REPORT_WRITTEN, self.report)
        self.guard.call("release", self._release)
        if len(self.guard.errors) > errors and self.report is not None:
            self.report.internal_errors += [e.to_dict() for e in self.guard.errors[errors:]]
            publish(self.report, self.guard, console=False)

    def _merge_ranks(self) -> None:
        """The job's report, once this rank's is on disk (distributed/merge.py: rank 0 waits
        a few seconds at most for the others; the last rank to close completes it). Only
        rank 0 prints: the job's report (its own where the merge failed)."""
        from .distributed.merge import merge_at_close

        assert self.dist is not None
        self.job_report = merge_at_close(self.out_dir / self.run_id, self.dist)
        if self.console and self.dist.rank == 0:
            from .report.console import print_report

            with contextlib.suppress(Exception):
                print_report(self.job_report or self.report)

    def _release(self) -> None:
        """After the report: the doctor and its probes hold none of the user's models, modules,
        optimizers or tensors (a closed doctor the user keeps, one `doc` per trial of a sweep,
        must not keep each trial's model and its Adam state alive). `models` and `optimizers`
        stay readable while the user holds them (weakly held from now on)."""
        self.models = WeakModels(self.models)
        live = self.optimizers.live() if isinstance(self.optimizers, WeakSlots) else self.optimizers
        self.optimizers = WeakList(live)
        self._primary = None
        self._first_opt = None
        self._drop_refs.clear()
        self._anchors = weakref.WeakKeyDictionary()
        ctx = self.run.attached
        if ctx is not None:
            # (the scaler stays: `doc.scaler` is read after close, and it holds no model)
            ctx.models, ctx.optimizers = self.models, self.optimizers
            ctx.forget_params()
        # Never entered: the run's shared services and the report (its timeline is the run's).
        keep = {id(o) for o in (self, self.run, self.timeline, self.rec, self.guard, self.bus)}
        keep |= {id(self.budget), id(self.report), id(self.run.state), id(self._clock)}
        if ctx is not None:
            scrub(ctx, keep)
        for holder in (self._steps, *self.probes):
            scrub(holder, keep)

    def _detach(self) -> None:
        _OPEN[:] = [r for r in _OPEN if r() not in (None, self)]
        if self._listening:
            _patches.remove_backward_listener(self.observe_backward, self._steps.after_backward)
            self._listening = False
        self._steps.hand.stop()
        if self._unwatched is not None:
            self._unwatched.stop()
        self.guard.call("compile watch", self._steps.compile_watch.detach)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._watched_scaler is not None:
            _patches.unwatch_scaler(self._watched_scaler, self.scaler_updated)
            self._watched_scaler = None
        if self._scaler_finder is not None:
            self._scaler_finder.stop()
            self._scaler_finder = None
        for probe in self.probes:
            self.guard.call(f"probe {probe.name} detach", probe.detach)
        if self._pickles_clean:
            self._pickles_clean = False
            self.guard.call("hooks out of pickles", _hooks.keep_hooks_in_pickles)

    def __enter__(self) -> Doctor:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self.close(exc)
        # Swallow only our own --max-steps stop signal; a user's exception propagates.
        return isinstance(exc, StopTraining)


_clock = time.perf_counter
_OPT_STEP = "hook optimizer step"


_HEAD = itemgetter(0)
_PARTITION = methodcaller("partition", ".")


def _ours(model: Any) -> bool:
    """A model of our own (loose.py's LooseTensors: a script's hand-trained tensors), held
    strongly for the run (not imported here: it defines a Module subclass)."""
    return type(model).__module__ == "traindoctor.loose"


def _first_ref(optimizers: list[Any]) -> Any:
    """What the step hook calls for the first optimizer: a weakref (strongly held elsewhere
    in watch mode), None without one."""
    if not optimizers:
        return None
    first = optimizers[0]
    return weakref.ref(first) if not isinstance(first, DroppedOptimizer) else lambda: None


def _on_drop(doctor: Doctor, kind: str, key: int) -> Any:
    """The weakref callback for `doctor`'s watched object `key` (the doctor held weakly too:
    a doctor dropped before the model goes with it)."""
    ref = weakref.ref(doctor)

    def dropped(_: Any) -> None:
        doc = ref()
        if doc is not None:
            doc.guard.call("release dropped", doc._dropped, kind, key)

    return dropped


def _check_value(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, torch.Tensor | numbers.Real) and not isinstance(value, bool):
        return  # numbers.Real: numpy's float32/int64 scalars too
    raise UsageError(
        f"doc.log({name}=...) takes a tensor or a number, got {type(value).__name__}; "
        f"pass the tensor itself, e.g. doc.log({name}=loss)"
    )


def _new_run_id(script: str | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if not script:
        stem = "run"
    elif script.endswith(".py") or "/" in script or "\\" in script:
        stem = Path(script).stem
    else:
        stem = script.rsplit(".", 1)[-1]  # a module name: `-m pkg.train` -> train
    return f"{stamp}-{stem}-{time.perf_counter_ns() % 100000:05d}"

"""Activations: per layer and per unit, which ReLU units never fire and which tanh/sigmoid units
sit in their flat tails, over a window of sampled steps (TD303, TD304).

On sampled steps only (the budget's schedule, structural steps included), this probe switches
on forward hooks (registered once at attach, _switch.py) on the watched modules and, for the duration of the root model's forward only, a
`TorchFunctionMode` that sees every activation *call*: `nn.ReLU`/`nn.Tanh`/`nn.Sigmoid`/
`nn.Hardtanh`/`nn.LeakyReLU` modules (they call the functional forms), `torch.relu`, `F.relu`,
`x.relu()`, `torch.tanh`, `torch.sigmoid`, `F.hardtanh`, ... alike. Why a mode rather than
patching `torch.relu`: a mode sees calls through any alias (`from torch import relu`, tensor
methods), touches no global name, is removed by leaving it, and costs nothing on unsampled
steps; nested calls (F.relu calling torch.relu) are seen once. Each call is named after the
module that produced its input (`fc1` for `relu(self.fc1(x))`), else the activation module
running it, else the enclosing module and the op.

Per call, on the device, with no host sync: for ReLU-like ops a per-unit `any(x > 0)` (unit =
channel for conv-like producers, last dim otherwise), for saturating ops a per-unit "saturated
in >= 90% of its values" flag (|tanh| > 0.99, sigmoid < 0.01 or > 0.99, hardtanh at its
bounds), and `std_mean` of the pre-activation. Step results are kept on the device for a window
of `WINDOW` sampled steps and reduced to one number per layer; everything is read back with the
step's one batched read. The output of the op is returned untouched: training is bit-identical.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .._mode_stack import UsersOff
from ..timeline import signal
from ._switch import HookSwitch
from .base import AttachContext, Probe, Recorder

ACT_SITES = signal(
    "activations.sites",
    "per sampled step: {layer: {op, kind, module_type, units, window}} activation calls seen",
)
ACT_DEAD = signal(
    "activations.dead",
    "per sampled step: {layer: fraction of ReLU units never active over the window}",
)
ACT_SATURATED = signal(
    "activations.saturated",
    "per sampled step: {layer: fraction of tanh/sigmoid units saturated in every step of the window}",
)
ACT_PRE_MEAN = signal("activations.pre_mean", "per sampled step: {layer: mean pre-activation}")
ACT_PRE_STD = signal("activations.pre_std", "per sampled step: {layer: std of the pre-activation}")
ACT_BIAS_MEAN = signal(
    "activations.bias_mean",
    "per sampled step: {layer: mean bias of the module producing the pre-activation}",
)
ACT_INPUT_STD = signal("activations.input_std", "per sampled step: std of the model's input batch")

WINDOW = 4  # sampled steps a unit must stay dead/saturated
# A forward whose activation calls end early is watched to its last one (see ActivationsProbe's
# plan) once AGREE full forwards in a row agreed; the VERIFY_EVERY-th one after runs in full,
# then each gap doubles while the full ones agree, up to VERIFY_MAX (one full forward cost ~5x
# a planned one on a model of 5,000 layers: every 8th sampled step paid it). Two
# that agree on the structural steps plan the rest of those steps (AGREE_STRUCTURAL); a planned
# forward there that holds to its plan counts toward AGREE.
AGREE = 3
AGREE_STRUCTURAL = 2
VERIFY_EVERY = 8
VERIFY_MAX = 64
UNIT_SATURATED = 0.9  # a unit is saturated in a step when this share of its values is
MAX_SITES = 256
_CONV_LIKE = ("Conv", "BatchNorm", "InstanceNorm", "GroupNorm", "Pool")
_TANH_SAT = math.atanh(0.99)  # |x| beyond which |tanh(x)| > 0.99
_SIGMOID_SAT = math.log(0.99 / 0.01)  # |x| beyond which sigmoid(x) < 0.01 or > 0.99


def _activation_funcs() -> dict[Any, tuple[str, str]]:
    out: dict[Any, tuple[str, str]] = {}
    for op, kind, funcs in (
        ("relu", "relu", ("relu", "relu_")),
        ("tanh", "tanh", ("tanh", "tanh_")),
        ("sigmoid", "sigmoid", ("sigmoid", "sigmoid_")),
    ):
        for name in funcs:
            for owner in (torch, torch.Tensor):
                fn = getattr(owner, name, None)
                if fn is not None:
                    out[fn] = (op, kind)
    out[F.relu] = ("relu", "relu")
    out[F.leaky_relu] = ("leaky_relu", "relu")
    out[F.hardtanh] = ("hardtanh", "hardtanh")
    out[F.tanh] = ("tanh", "tanh")
    out[F.sigmoid] = ("sigmoid", "sigmoid")
    return out


ACT_FUNCS = _activation_funcs()
_ACT_MODULES = ("ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Hardtanh", "ReLU6")


class _Mode(TorchFunctionMode):
    def __init__(self, probe: ActivationsProbe) -> None:
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        probe = self.probe
        probe._ops += 1
        spec = ACT_FUNCS.get(func)
        if spec is not None and args and isinstance(args[0], torch.Tensor):
            with UsersOff():  # the user's tensor subclasses and modes do not see our reads
                probe._observe(spec, func, args, kwargs)  # before: in-place ops overwrite x
        if probe._ops == probe._stop_at:
            probe._leaving = True  # left at the next module hook (see _Plan)
        return func(*args, **kwargs)


class _Site:
    __slots__ = ("op", "kind", "module", "module_type", "units", "history", "step", "stats")

    def __init__(self, op: str, kind: str, module: Any, module_type: str, units: int) -> None:
        self.op = op
        self.kind = kind
        self.module = module  # the producing module (for its bias), or None
        self.module_type = module_type
        self.units = units
        self.history: deque[torch.Tensor] = deque(maxlen=WINDOW)  # per-unit flags per step
        self.step: torch.Tensor | None = None  # this step's per-unit flags
        self.stats: list[tuple[torch.Tensor, torch.Tensor]] = []  # this step's (mean, std) per call


class ActivationsProbe(Probe):
    name = "activations"
    provides: ClassVar[tuple[str, ...]] = (
        ACT_SITES,
        ACT_DEAD,
        ACT_SATURATED,
        ACT_PRE_MEAN,
        ACT_PRE_STD,
        ACT_BIAS_MEAN,
        ACT_INPUT_STD,
    )
    # Hooks are switched on in a sampled prepare() and off in that step's on_step_end.
    sampled_only = frozenset({"prepare", "on_step_end"})

    def __init__(self) -> None:
        super().__init__()
        self._sites: dict[str, _Site] = {}
        self._switch: HookSwitch | None = None
        self._mode: _Mode | None = None
        self._depth = 0
        # (qualified name, module type, root, module) of the modules running now
        self._stack: list[tuple[str, str, bool, torch.nn.Module]] = []
        # id(output) -> the output (held: its id is not reused while the forward runs) and the
        # facts of the module that produced it, in two dicts (no tuple per module call).
        self._produced: dict[int, torch.Tensor] = {}
        self._producer: dict[int, tuple[str, str, bool, torch.nn.Module]] = {}
        # id(module) -> (name, type name, is a model's root, the module): the shared hooks'.
        # A root's is a weakref (a zero-code run's model the script drops is freed, and
        # models_dropped forgets its entries); the hooks know a root by facts[2].
        self._modules: dict[int, tuple[str, str, bool, torch.nn.Module]] = {}
        self._calls: dict[str, int] = {}
        self._input_std: torch.Tensor | None = None
        self._active = False
        # The plan: on a model of thousands of modules most of the forward's ops come after
        # its last activation call that a site records (the first MAX_SITES sites, or none:
        # GELU/SiLU models), and the mode and the module hooks cost ~5 us an op/module there.
        # A full forward counts its ops and the op of its last recorded call; when AGREE full
        # forwards in a row agree (same op count, same last recorded op), later sampled
        # forwards leave the mode and switch the non-root hooks off at the first module hook
        # after that op: a model whose forward does the same ops each time records what it
        # did. A forward whose last recorded op is elsewhere when it leaves drops the plan,
        # and the full ones come back at doubling gaps (VERIFY_EVERY up to VERIFY_MAX, from
        # VERIFY_EVERY again once one disagrees); a forward that varies without changing
        # its op count or the place of its last recorded call up to there (an extra call
        # after it, on some forwards only) goes unseen on the planned ones.
        self._ops = 0  # ops the mode saw in this forward
        self._last_use = 0  # the op number of the last call recorded in this forward
        self._stop_at = -1  # leave after this op (-1: a full forward)
        self._leaving = False
        # the last full forward's (root, ops, last): a plan holds for the forwards of one model
        self._full_sig: tuple[int | None, int, int] | None = None
        self._agreed = 0  # full forwards in a row with that signature, less one
        self._plan: int | None = None  # the agreed last recorded op
        self._plan_root: int | None = None  # id() of the model whose forwards agreed
        self._root: int | None = None  # id() of the model whose forward the mode is in
        # A plan from AGREE_STRUCTURAL forwards holds up to this step (the structural steps':
        # steps 1-3 are sampled one after another, and a third full forward there cost as much
        # as the first on a model of thousands of layers); later forwards run in full until
        # AGREE agree. None: a plan of AGREE forwards.
        self._plan_until: int | None = None
        self._forwards = 0  # sampled forwards seen (full or planned)
        self._verify_gap = VERIFY_EVERY  # forwards from the next full one to the one after
        self._next_verify = VERIFY_EVERY  # the forward number of the next full one
        self._roots: HookSwitch | None = None  # the roots' hooks: on for the whole step

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        # Registered once, off: a sampled step switches them on (see _switch.py).
        # One pre and one post hook object for every module, the module's facts looked up by
        # id (a closure per module and hook was ~6 objects more for the cyclic collector to
        # walk at every full collection, on models of 10,000 modules).
        switch = self._switch = HookSwitch(ctx)
        roots = self._roots = HookSwitch(ctx)
        pre = ctx.hook("probe activations", self._on_pre, in_mode=True)
        post = ctx.hook("probe activations", self._on_post, in_mode=True)
        for prefix, model in ctx.eager_models().items():
            for name, module in model.named_modules():
                qual = f"{prefix}{name}" if name else (prefix.rstrip(".") or "<model>")
                root = not name
                facts = (qual, type(module).__name__, root, weakref.ref(module) if root else module)
                where = roots if root else switch
                if self._modules.setdefault(id(module), facts) is not facts:
                    # the same module object under a second model: hooks of its own
                    where.forward_pre_hook(
                        prefix,
                        module,
                        ctx.hook(
                            "probe activations", self._pre_hook(qual, module, root), in_mode=True
                        ),
                    )
                    where.forward_hook(
                        prefix,
                        module,
                        ctx.hook(
                            "probe activations", self._post_hook(qual, module, root), in_mode=True
                        ),
                        always_call=True,
                    )
                    continue
                where.forward_pre_hook(prefix, module, pre)
                where.forward_hook(prefix, module, post, always_call=True)

    # -- per-step hooks -------------------------------------------------------------------
    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._remove_step_hooks()
        self._input_std = None
        for site in self._sites.values():
            site.step = None
            site.stats = []
        if sampled and self._switch is not None:
            self._switch.on()
            if self._roots is not None:
                self._roots.on()
            self._active = True

    def _on_pre(self, module: torch.nn.Module, args: Any) -> None:
        facts = self._modules.get(id(module))
        # (a deep copy of the model, an autopsy's, may carry the hooks: not its modules; a
        # root's entry goes with its root, models_dropped)
        if facts is not None and (facts[3] is module or facts[2]):
            self._pre(facts, module, args)

    def _on_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        facts = self._modules.get(id(module))
        if facts is not None and (facts[3] is module or facts[2]):
            self._post(facts, module, output)

    def _pre_hook(self, qual: str, owner: torch.nn.Module, root: bool):
        facts = (qual, type(owner).__name__, root, owner)

        def hook(module: torch.nn.Module, args: Any) -> None:
            if module is owner:  # a deep copy of the model (an autopsy) carries the hooks
                self._pre(facts, module, args)

        return hook

    def _post_hook(self, qual: str, owner: torch.nn.Module, root: bool):
        facts = (qual, type(owner).__name__, root, owner)

        def hook(module: torch.nn.Module, _args: Any, output: Any) -> None:
            if module is owner:
                self._post(facts, module, output)

        return hook

    def _pre(
        self, facts: tuple[str, str, bool, torch.nn.Module], module: torch.nn.Module, args: Any
    ) -> None:
        if self._leaving:
            self._leave()
        if facts[2]:  # a model's root
            assert self.ctx is not None
            if (
                self._depth == 0
                and module.training
                and torch.is_grad_enabled()
                and not self.ctx.state.validating
            ):
                if self._input_std is None:  # (before the mode: its ops are not counted)
                    x = next((a for a in args if isinstance(a, torch.Tensor)), None)
                    if x is not None and x.is_floating_point() and x.numel() > 1:
                        with torch.no_grad():
                            self._input_std = x.detach().float().std()
                self._root = id(module)
                self._enter_mode()
            self._depth += 1
        if self._mode is not None:
            self._stack.append(facts)  # (name, type name, ...): no tuple per call

    def _enter_mode(self) -> None:
        assert self.ctx is not None
        self._forwards += 1
        plan = self._plan
        if plan is not None and self._forwards >= self._next_verify:
            plan = None  # a full forward, to check the plan against
            self._next_verify = self._forwards + self._verify_gap
            self._verify_gap = min(2 * self._verify_gap, VERIFY_MAX)
        if self._plan_root != self._root:
            plan = None  # agreed on another model's forwards (a GAN's D, then its G)
        if self._plan_until is not None and self.ctx.state.step > self._plan_until:
            plan = None  # a structural steps' plan, past them: full forwards until AGREE agree
        self._stop_at = -1 if plan is None else plan
        self._ops = 0
        self._last_use = 0
        self._leaving = False
        if self._switch is not None and not self._switch.active:
            self._switch.on()  # a planned forward earlier in this step switched them off
        self._produced.clear()
        self._producer.clear()
        self._calls.clear()
        self._stack.clear()
        if plan == 0:  # nothing recorded in this model's forwards: no mode at all
            self._leaving = True
            return
        self._mode = _Mode(self)
        self._mode.__enter__()
        self.ctx.quiet_mode = self._mode  # our other hooks run without it

    def _leave(self) -> None:
        """A planned forward past its last recorded call: the mode is left and the non-root
        hooks switched off for the rest of it (the roots' hooks end the forward as usual)."""
        mode = self._mode
        if mode is not None and not _mode_on_top(mode):
            return  # a mode entered above ours (the user's): ours is left at the root's end
        self._leaving = False
        if self._last_use != self._plan:
            self._plan = None  # this forward differs from the agreed ones: full ones again
            self._verify_sooner()
        elif self._plan_until is not None:
            # A structural steps' plan that held to its last recorded op: it counts toward
            # AGREE, so that the first sampled step after them is not a full forward again
            # (what comes after that op is seen only by the full forwards that agreed).
            self._agreed += 1
            if self._agreed >= AGREE - 1:
                self._plan_until = None
        if mode is not None:
            self._mode = None
            self._quiet_off()
            self._produced.clear()
            self._producer.clear()
            self._stack.clear()
            mode.__exit__(None, None, None)
        if self._switch is not None:
            self._switch.off()

    def _post(
        self, facts: tuple[str, str, bool, torch.nn.Module], module: torch.nn.Module, output: Any
    ) -> None:
        if self._leaving:
            self._leave()
        qual, root = facts[0], facts[2]
        if self._mode is not None:
            if self._stack and self._stack[-1][0] == qual:
                self._stack.pop()
            if isinstance(output, torch.Tensor) and id(output) not in self._produced:
                # innermost first: a container returning its last child's output keeps the
                # child's name
                self._produced[id(output)] = output
                self._producer[id(output)] = facts
        if root:
            self._depth = max(0, self._depth - 1)
            if self._depth == 0 and self._mode is not None:
                if self._stop_at < 0:  # a full forward: does it agree with the last ones?
                    sig = (self._root, self._ops, self._last_use)
                    if sig != self._full_sig:
                        self._verify_sooner()
                    self._agreed = self._agreed + 1 if sig == self._full_sig else 0
                    self._plan, self._plan_until = None, None
                    self._plan_root = sig[0]
                    if self._agreed >= AGREE - 1:
                        self._plan = sig[2]
                        # (a plan agreed now is checked again a gap from now)
                        self._next_verify = max(
                            self._next_verify, self._forwards + self._verify_gap
                        )
                    elif self._agreed >= AGREE_STRUCTURAL - 1:
                        structural = self.ctx.budget.structural_steps  # type: ignore[union-attr]
                        if self.ctx.state.step < structural:  # type: ignore[union-attr]
                            self._plan, self._plan_until = sig[2], structural
                    self._full_sig = sig
                else:  # a planned forward that ended before its last recorded op
                    self._plan = None
                    self._verify_sooner()
                mode, self._mode = self._mode, None
                self._quiet_off()
                self._produced.clear()
                self._producer.clear()
                self._stack.clear()
                mode.__exit__(None, None, None)

    def _verify_sooner(self) -> None:
        """A forward differed from the plan: a later plan is checked at the first gap again."""
        self._verify_gap = VERIFY_EVERY
        self._next_verify = min(self._next_verify, self._forwards + VERIFY_EVERY)

    def _remove_step_hooks(self) -> None:
        self._leaving = False
        if self._switch is not None:
            self._switch.off()
        if self._roots is not None:
            self._roots.off()
        if self._mode is not None:  # a forward that never finished: leave the mode
            mode, self._mode = self._mode, None
            self._quiet_off()
            self._depth = 0
            try:
                mode.__exit__(None, None, None)
            except Exception:  # noqa: BLE001
                pass
        self._produced.clear()
        self._producer.clear()
        self._stack.clear()
        self._active = False

    def _quiet_off(self) -> None:
        if self.ctx is not None:
            self.ctx.quiet_mode = None

    # -- one activation call ----------------------------------------------------------------
    def _observe(self, spec: tuple[str, str], func: Any, args: Any, kwargs: Any) -> None:
        try:
            self._measure(spec, func, args, kwargs)
        except Exception as exc:  # noqa: BLE001
            assert self.ctx is not None
            self.ctx.guard.record("probe activations", exc)

    def _measure(self, spec: tuple[str, str], func: Any, args: Any, kwargs: Any) -> None:
        op, kind = spec
        x = args[0]
        if x.ndim < 1 or x.numel() < 2 or not x.is_floating_point():
            return
        module = None
        if self._produced.get(id(x)) is x:
            name, mtype, _, module = self._producer[id(x)]
        elif self._stack and self._stack[-1][1] in _ACT_MODULES:
            name, mtype = self._stack[-1][0], self._stack[-1][1]
        else:
            outer = self._stack[-1][0] if self._stack else "<model>"
            mtype = ""
            k = self._calls.get(f"{outer}.{op}", 0) + 1
            self._calls[f"{outer}.{op}"] = k
            name = f"{outer}.{op}" if k == 1 else f"{outer}.{op}#{k}"
        site = self._sites.get(name)
        if site is None and len(self._sites) >= MAX_SITES:
            return  # (before the unit dim: most calls of a model of thousands of layers)
        udim, other = _unit_dims(mtype, x.ndim)
        units = x.shape[udim]
        if site is None:
            site = self._sites[name] = _Site(op, kind, module, mtype, units)
        if site.units != units or site.kind != kind:
            return
        with torch.no_grad():
            xd = x.detach()
            if kind == "relu":
                flags = (xd > 0).any(dim=other) if other else xd > 0
            else:
                if kind == "tanh":
                    sat = xd.abs() > _TANH_SAT
                elif kind == "sigmoid":
                    sat = xd.abs() > _SIGMOID_SAT
                else:
                    lo, hi = _hardtanh_bounds(args, kwargs)
                    sat = (xd <= lo) | (xd >= hi)
                frac = sat.float().mean(dim=other) if other else sat.float()
                flags = frac >= UNIT_SATURATED
            std, mean = torch.std_mean(xd.float())  # 0-d each (numel >= 2: checked above)
        self._last_use = self._ops
        if site.step is None:
            site.step = flags
        elif kind == "relu":
            site.step = site.step | flags  # active in any call
        else:
            site.step = site.step & flags  # saturated in every call
        site.stats.append((mean, std))

    # -- step end: one number per layer, deferred to the batched read-back ----------------------
    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._remove_step_hooks()
        seen = {n: s for n, s in self._sites.items() if s.step is not None}
        if self._input_std is not None:
            rec.defer(step, ACT_INPUT_STD, self._input_std)
            self._input_std = None
        if not seen:
            return
        names = list(seen)
        sites = list(seen.values())
        for site in sites:
            site.history.append(site.step)  # type: ignore[arg-type]
        rec.record(
            step,
            ACT_SITES,
            {
                n: {
                    "op": s.op,
                    "kind": s.kind,
                    "module_type": s.module_type,
                    "units": s.units,
                    "window": len(s.history),
                }
                for n, s in seen.items()
            },
        )
        # A few ops for all sites together (one each per site was ~15 ops a site, 256 sites).
        with torch.no_grad():
            relu = [i for i, s in enumerate(sites) if s.kind == "relu"]
            sat = [i for i, s in enumerate(sites) if s.kind != "relu"]
            for signal_name, idx in ((ACT_DEAD, relu), (ACT_SATURATED, sat)):
                if idx:
                    rec.defer(
                        step,
                        signal_name,
                        _window_fractions([sites[i] for i in idx], dead=signal_name == ACT_DEAD),
                        keys=[names[i] for i in idx],
                    )
            means, stds = _step_stats(sites)
            rec.defer(step, ACT_PRE_MEAN, means, keys=names)
            rec.defer(step, ACT_PRE_STD, stds, keys=names)
            bias_names, biases = [], []
            for n, site in zip(names, sites):
                module = site.module
                if type(module) is weakref.ReferenceType:
                    module = module()  # a model's root (held weakly)
                bias = getattr(module, "bias", None) if module is not None else None
                if isinstance(bias, torch.Tensor) and bias.numel() > 0:
                    bias_names.append(n)
                    biases.append(bias.detach())
            if biases:
                rec.defer(step, ACT_BIAS_MEAN, _means(biases), keys=bias_names)
        for site in sites:
            site.step = None
            site.stats = []

    def models_dropped(self, prefixes: list[str], rec: Recorder) -> None:
        """Watched models the script dropped were freed (Doctor._dropped, zero-code mode):
        their modules' entries go (a later model may reuse their ids), and their sites keep
        their history without the module (recorded already)."""
        ctx = self.ctx
        assert ctx is not None
        live = {id(m) for model in ctx.models.values() for m in model.modules()}
        self._modules = {k: f for k, f in self._modules.items() if k in live}
        for site in self._sites.values():
            if isinstance(site.module, torch.nn.Module) and id(site.module) not in live:
                site.module = None
        self._plan = self._plan_root = self._full_sig = None  # (a later root may reuse its id)

    def detach(self) -> None:
        self._remove_step_hooks()
        if self._switch is not None:
            self._switch.remove()
        if self._roots is not None:
            self._roots.remove()
        super().detach()


_unit_dims_known: dict[tuple[str, int], tuple[int, tuple[int, ...]]] = {}


def _unit_dims(mtype: str, ndim: int) -> tuple[int, tuple[int, ...]]:
    """The unit dim of an activation's input (channels for conv-like producers, the last dim
    otherwise) and the dims reduced over, per (producer type, rank): a few pairs a model, where
    two generators a call were ~20 Python calls on every sampled step's recorded calls."""
    known = _unit_dims_known.get((mtype, ndim))
    if known is None:
        conv_like = any(c in mtype for c in _CONV_LIKE) or (not mtype and ndim in (4, 5))
        udim = 1 if (conv_like and ndim >= 3) else ndim - 1
        known = _unit_dims_known[(mtype, ndim)] = (udim, tuple(d for d in range(ndim) if d != udim))
    return known


def _mode_on_top(mode: Any) -> bool:
    n = torch._C._len_torch_function_stack()
    return n > 0 and torch._C._get_function_stack_at(n - 1) is mode


def _hardtanh_bounds(args: Any, kwargs: Any) -> tuple[float, float]:
    lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
    hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
    return float(lo), float(hi)


def _window_fractions(sites: list[_Site], dead: bool) -> torch.Tensor:
    """Per site, the fraction of its units never active over its window (`dead`: ReLU-like
    sites), or saturated in every step of it: the window's flags of all sites concatenated,
    step by step (a site with a shorter history padded with flags that change nothing), one
    any/all over the window and one mean per site. Site by site where the flags cannot be
    concatenated (see _concatenable)."""
    if not _concatenable([flags for s in sites for flags in s.history]):
        return torch.stack([_window_fraction(s, dead) for s in sites])
    depth = max(len(s.history) for s in sites)
    rows = []
    for back in range(1, depth + 1):
        row = [
            s.history[-back]
            if back <= len(s.history)
            else torch.full((s.units,), not dead, dtype=torch.bool, device=s.history[-1].device)
            for s in sites
        ]
        rows.append(torch.cat(row) if len(row) > 1 else row[0])
    window = torch.stack(rows)
    ever = window.any(dim=0) if dead else window.all(dim=0)
    lengths = torch.tensor([s.units for s in sites], device=ever.device)
    frac = torch.segment_reduce(ever.float(), "mean", lengths=lengths)
    return 1.0 - frac if dead else frac


def _window_fraction(site: _Site, dead: bool) -> torch.Tensor:
    """_window_fractions for one site."""
    window = torch.stack(list(site.history))
    ever = (window.any(dim=0) if dead else window.all(dim=0)).float().mean()
    return 1.0 - ever if dead else ever


def _concatenable(tensors: list[torch.Tensor]) -> bool:
    """Plain tensors of one dtype, device and rank: one concatenation and one segment_reduce
    serve them all (torch.cat takes one device; segment_reduce takes no DTensor, FSDP2's
    biases or a tensor-parallel model's activations)."""
    kinds = {(type(t), t.dtype, t.device, t.dim()) for t in tensors}
    return len(kinds) == 1 and next(iter(kinds))[0] is torch.Tensor


def _step_stats(sites: list[_Site]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per site, the mean over this step's calls of each call's pre-activation mean and std."""
    if all(len(s.stats) == 1 for s in sites):  # one call a site: no mean to take
        both = torch.stack([s.stats[0][0] for s in sites] + [s.stats[0][1] for s in sites])
    else:
        both = torch.stack(
            [torch.stack([m for m, _ in s.stats]).mean() for s in sites]
            + [torch.stack([d for _, d in s.stats]).mean() for s in sites]
        )
    return both[: len(sites)], both[len(sites) :]


def _means(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The mean of each tensor, as float32: one concatenation and one segment mean where the
    tensors are 1-D and concatenable (biases, the usual case), else one mean each."""
    if _concatenable(tensors) and tensors[0].dim() == 1:
        flat = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        lengths = torch.tensor([t.numel() for t in tensors], device=flat.device)
        return torch.segment_reduce(flat.float(), "mean", lengths=lengths)
    return torch.stack([t.float().mean() for t in tensors])

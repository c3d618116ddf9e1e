"""Trainable-parameter audit: what trains, per component, and failed `requires_grad` requests.

The audit is one walk over `named_parameters()`, taken at attach and again on a sampled step
after the structure changed (a `requires_grad` flag flipped, params replaced, an optimizer's
groups edited): never per step. A component is a direct child of each watched model, looked
up under wrappers that hide it (PEFT's `PeftModel.base_model.model`, DDP's `.module`,
`torch.compile`'s `._orig_mod`), named the way the user writes it (`llm`, `projector`).

While a doctor is attached (in zero-code mode from the start of the script, when the session
calls `watch_requires_grad`), `requires_grad=True` asked of a non-float parameter is recorded
as a `grad_on_non_float` event before torch's own error propagates unchanged.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from itertools import chain
from typing import Any, ClassVar

import torch

from .. import _requires_grad_patch
from .._source import user_source_with_code
from .base import AttachContext, Probe, Recorder, RunContext

# Attribute names under which wrappers keep the model they wrap (their only child).
WRAPPER_CHILDREN = ("base_model", "model", "module", "_orig_mod")
# Parameter classes of quantized storage, by name: bitsandbytes is never imported for this.
QUANTIZED_CLASSES = ("Params4bit", "Int8Params")
LORA_MODULES = ("lora_A", "lora_B", "lora_magnitude_vector")
MAX_COMPONENTS = 16  # more direct children than this (a Sequential of layers) are folded
MAX_NAMES = 8  # names kept per list in a row
MAX_EVENTS = 32  # distinct failed requests recorded


class AuditProbe(Probe):
    name = "audit"
    provides: ClassVar[tuple[str, ...]] = ()
    provides_events: ClassVar[tuple[str, ...]] = ("audit",)
    provides_facts: ClassVar[tuple[str, ...]] = ("audit",)
    sampled_only = frozenset({"on_step_end"})

    def __init__(self) -> None:
        super().__init__()
        self._generation = -1
        self._signature: tuple = ()
        self._watch: _Handle | None = None
        self._rec: Recorder | None = None
        # Rows of the components of models the script dropped (a zero-code sweep's finished
        # trials): the table keeps what the run trained.
        self._gone: list[dict[str, Any]] = []

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec
        self._watch = watch_requires_grad(ctx.run)
        self._refresh(ctx.state.step, rec)

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        if sampled:
            self._refresh_if_changed(step + 1, rec)  # the structure the next step trains with

    def _failed(self, ctx: AttachContext) -> bool:
        return f"probe {self.name}" in ctx.guard.disabled

    def _refresh_if_changed(self, step: int, rec: Recorder) -> None:
        ctx = self.ctx
        assert ctx is not None
        ctx.new_step()  # the params as they are now, not as the step's cache saw them
        if (
            _requires_grad_patch.generation != self._generation
            or _signature(ctx) != self._signature
        ):
            self._refresh(step, rec)

    def _refresh(self, step: int, rec: Recorder) -> None:
        ctx = self.ctx
        assert ctx is not None
        self._generation = _requires_grad_patch.generation
        self._signature = _signature(ctx)
        held = ctx.optimizer_param_ids() if ctx.optimizers else None
        audit = with_rows(audit_models(ctx.models, ctx.named_params(), held), self._gone)
        previous = rec.timeline.facts.get("audit")
        if previous is not None and _same(previous, audit):
            return
        audit["step"] = step
        rec.timeline.facts["audit"] = audit
        t = audit["totals"]
        rec.event(
            step,
            "audit",
            params=t["params"],
            trainable=t["trainable"],
            quantized=t["quantized"],
            lora=t["lora"],
        )

    def models_dropped(self, prefixes: list[str], rec: Recorder) -> None:
        """Watched models the script dropped were freed (Doctor._dropped): the rows of their
        components in the last audit stay in the table."""
        ctx = self.ctx
        previous = rec.timeline.facts.get("audit")
        if ctx is None or not previous:
            return
        live = audit_models(ctx.models, ctx.named_params())["components"]
        have = {r["component"] for r in (*live, *self._gone)}
        self._gone += [r for r in previous.get("components", []) if r["component"] not in have]

    def detach(self) -> None:
        super().detach()
        ctx, rec = self.ctx, self._rec
        self._rec = None
        try:
            if ctx is not None and rec is not None and not self._failed(ctx):
                # The report's table is the model as the run left it (a late unfreeze included).
                self._refresh_if_changed(ctx.state.step, rec)
        finally:
            if self._watch is not None:  # the patch goes whatever happened above
                self._watch.remove()
                self._watch = None


def _signature(ctx: AttachContext) -> tuple:
    """Identity of the params and of the optimizers' groups: cheap to compare (the params by
    the version of ctx's list, which changes when a walk finds another module tree; the groups
    read in C, no tuple per param)."""
    ctx.named_params()
    groups = list(
        map(
            id, chain.from_iterable(g["params"] for opt in ctx.optimizers for g in opt.param_groups)
        )
    )
    return ctx.named_version, groups


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("components") == b.get("components") and a.get("totals") == b.get("totals")


# -- the audit ------------------------------------------------------------------------------
def unwrap(model: torch.nn.Module) -> tuple[torch.nn.Module, str, list[str]]:
    """(inner module, its param-name prefix, wrapper classes): follow a wrapper's only child
    while the wrapper holds no parameter of its own."""
    path, wrappers = "", []
    for _ in range(8):
        children = list(model._modules.items())
        if len(children) != 1 or children[0][0] not in WRAPPER_CHILDREN:
            break
        if any(True for _ in model.parameters(recurse=False)):
            break
        name, child = children[0]
        if child is None:
            break
        wrappers.append(type(model).__name__)
        path += f"{name}."
        model = child
    return model, path, wrappers


def is_quantized(p: torch.Tensor) -> bool:
    """Stored as integers (4-bit packed in uint8, int8) or a quantized dtype: cannot train."""
    if type(p).__name__ in QUANTIZED_CLASSES:
        return True
    return not (p.is_floating_point() or p.is_complex())


def is_lora(name: str) -> bool:
    return any(
        part in LORA_MODULES or part.startswith("lora_embedding_") for part in name.split(".")
    )


def logical_numel(p: torch.Tensor) -> int:
    """Values the tensor stands for: a 4-bit `Params4bit` packs two per byte; its quant_state
    has the original shape."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    if shape is not None:
        try:
            n = 1
            for d in shape:
                n *= int(d)
            return n
        except (TypeError, ValueError):
            pass
    return p.numel()


class _Components:
    """Maps qualified param names to components of the watched models."""

    def __init__(self, models: dict[str, torch.nn.Module]) -> None:
        self.roots: list[tuple[str, str, str]] = []  # (model prefix, inner path, root label)
        self.order: list[str] = []
        self.classes: dict[str, str] = {}
        self.wrappers: list[str] = []
        self.module_types: dict[str, str] = {}
        for prefix, model in models.items():
            inner, path, wrappers = unwrap(model)
            self.wrappers += [w for w in wrappers if w not in self.wrappers]
            label = prefix.rstrip(".") or "<model>"
            self.roots.append((prefix, path, label))
            for child_name, child in inner._modules.items():
                if child is None:
                    continue
                comp = f"{prefix}{child_name}"
                self.order.append(comp)
                self.classes[comp] = type(child).__name__
            for n, m in model.named_modules():
                self.module_types[f"{prefix}{n}"] = type(m).__name__

    def of(self, name: str) -> str:
        for prefix, path, label in self.roots:
            head = prefix + path
            if name.startswith(head):
                rest = name[len(head) :]
                if "." in rest:
                    return prefix + rest.split(".", 1)[0]
                return label  # a param held by the model itself
        return "<model>"

    def is_norm(self, name: str) -> bool:
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        return "Norm" in self.module_types.get(owner, "")


def _row() -> dict[str, Any]:
    return {
        "params": 0,
        "tensors": 0,
        "trainable": 0,
        "trainable_tensors": 0,
        "frozen": 0,
        "frozen_tensors": 0,
        "dtypes": {},
        "quantized": 0,
        "quantized_tensors": 0,
        "quantized_classes": {},
        "quantized_names": [],
        "lora": 0,
        "lora_tensors": 0,
        "lora_trainable_tensors": 0,
        "norm_tensors": 0,
        "float_tensors": 0,
        "not_in_optimizer": [],
    }


def _add(row: dict[str, Any], name: str, p: torch.Tensor, comps: _Components, held: Any) -> None:
    n = logical_numel(p)
    row["params"] += n
    row["tensors"] += 1
    dtype = str(p.dtype).replace("torch.", "")
    row["dtypes"][dtype] = row["dtypes"].get(dtype, 0) + 1  # tensors: 4-bit values != elements
    trainable = bool(p.requires_grad)
    key = "trainable" if trainable else "frozen"
    row[key] += n
    row[f"{key}_tensors"] += 1
    if is_quantized(p):
        row["quantized"] += n
        row["quantized_tensors"] += 1
        cls = type(p).__name__
        row["quantized_classes"][cls] = row["quantized_classes"].get(cls, 0) + 1
        if len(row["quantized_names"]) < MAX_NAMES:
            row["quantized_names"].append(name)
    else:
        row["float_tensors"] += 1
        if is_lora(name):
            row["lora"] += n
            row["lora_tensors"] += 1
            row["lora_trainable_tensors"] += trainable
        elif comps.is_norm(name):
            row["norm_tensors"] += 1
    if trainable and held is not None and id(p) not in held:
        if len(row["not_in_optimizer"]) < MAX_NAMES:
            row["not_in_optimizer"].append(name)
        row["not_in_optimizer_count"] = row.get("not_in_optimizer_count", 0) + 1


def audit_models(
    models: dict[str, torch.nn.Module],
    named: Iterable[tuple[str, torch.Tensor]] | None = None,
    held: set[int] | None = None,
) -> dict[str, Any]:
    """Per component and in total: params (values and tensors) trainable/frozen, dtypes,
    quantized storage, LoRA adapters, norms, and trainable params no optimizer holds (`held`:
    ids of the optimizers' tensors; None when there is no optimizer to compare with)."""
    comps = _Components(models)
    if named is None:
        named = [
            (f"{prefix}{n}", p) for prefix, m in models.items() for n, p in m.named_parameters()
        ]
    rows: dict[str, dict[str, Any]] = {}
    totals = _row()
    for name, p in named:
        comp = comps.of(name)
        row = rows.get(comp)
        if row is None:
            row = rows[comp] = _row()
        _add(row, name, p, comps, held)
        _add(totals, name, p, comps, held)
    order = [c for c in comps.order if c in rows] + [c for c in rows if c not in comps.order]
    components = [
        {"component": c, "class": comps.classes.get(c, "(own params)"), **rows[c]} for c in order
    ]
    if len(components) > MAX_COMPONENTS:
        components = _fold(components)
    return {
        "components": components,
        "totals": totals,
        "wrappers": comps.wrappers,
        "optimizer_known": held is not None,
    }


def _fold(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the largest components; the rest become one row."""
    keep = sorted(components, key=lambda r: -r["params"])[: MAX_COMPONENTS - 1]
    kept = {id(r) for r in keep}
    rest = [r for r in components if id(r) not in kept]
    other = {"component": f"({len(rest)} more)", "class": "", **_row()}
    for r in rest:
        _sum_into(other, r)
    return [r for r in components if id(r) in kept] + [other]


def _sum_into(total: dict[str, Any], r: dict[str, Any]) -> None:
    """Add row `r`'s counts, dtype/class counts and names to `total`."""
    for k, v in r.items():
        if k in ("component", "class"):
            continue
        if isinstance(v, int):
            total[k] = total.get(k, 0) + v
        elif isinstance(v, dict):
            total[k] = dict(total.get(k, {}))
            for kk, vv in v.items():
                total[k][kk] = total[k].get(kk, 0) + vv
        elif isinstance(v, list):
            total[k] = (total.get(k, []) + v)[:MAX_NAMES]


def with_rows(audit: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`audit` with the rows of dropped models' components first (those it has not), in its
    totals too."""
    names = {c["component"] for c in audit["components"]}
    rows = [r for r in rows if r["component"] not in names]
    if not rows:
        return audit
    totals = _row()  # in the table's order: the dropped models' names first
    for r in rows:
        _sum_into(totals, r)
    _sum_into(totals, audit["totals"])
    components = [*rows, *audit["components"]]
    if len(components) > MAX_COMPONENTS:
        components = _fold(components)
    return {**audit, "components": components, "totals": totals}


# -- failed requires_grad requests ----------------------------------------------------------
class _Handle:
    def __init__(self, watch: _RequiresGradWatch) -> None:
        self._watch: _RequiresGradWatch | None = watch

    def remove(self) -> None:
        if self._watch is not None:
            self._watch.release()
            self._watch = None


class _RequiresGradWatch:
    """Records `requires_grad=True` asked of non-float params into one run's timeline."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.refs = 0
        self.recorded: dict[tuple[str, str | None], dict[str, Any]] = {}

    def __call__(self, param: torch.Tensor, requested: bool, err: BaseException, via: str) -> None:
        self.run.guard.call("requires_grad watch", self._record, param, requested, err, via)

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            _requires_grad_patch.remove_listener(self)
            _watches.pop(id(self.run), None)

    def _record(self, param: torch.Tensor, requested: bool, err: BaseException, via: str) -> None:
        run = self.run
        if run.state.closed or not requested or not is_quantized(param):
            return  # other errors (an inference tensor, a non-leaf) are not this rule's
        name, models = self._name(param)
        src = user_source_with_code(skip=1) or {}
        key = (name, src.get("source"))
        seen = self.recorded.get(key)
        if seen is not None:
            seen["count"] += 1  # the same line asking again (a try/except per param)
            return
        if len(self.recorded) >= MAX_EVENTS:
            return
        comps = _Components(models) if models else None
        facts = run.rec.timeline.facts
        if "audit" not in facts and models:
            # Before attach (zero-code, the script's setup): audit the model that holds it, so
            # the finding can say what can train.
            facts["audit"] = {**audit_models(models), "step": run.state.step}
        event = {
            "param": name,
            "component": comps.of(name) if comps and name else None,
            "dtype": str(param.dtype).replace("torch.", ""),
            "class": type(param).__name__,
            "shape": list(param.shape),
            "via": via,
            "error": str(err).splitlines()[0][:200] if str(err) else type(err).__name__,
            "source": src.get("source"),
            "code": src.get("code"),
            "attached": run.attached is not None,
            "count": 1,
        }
        run.rec.event(run.state.step, "grad_on_non_float", **event)
        self.recorded[key] = run.rec.timeline.events("grad_on_non_float")[-1]

    def _name(self, param: torch.Tensor) -> tuple[str | None, dict[str, torch.nn.Module]]:
        ctx = self.run.attached
        if ctx is not None:
            name = ctx.param_names.get(id(param))
            if name is None:
                name = next((n for n, p in ctx.named_params() if p is param), None)
            if name is not None:
                return name, ctx.models
        # Not a watched param (or nothing watched yet): the top-level module holding it, found
        # once in the heap. Only on this error path, at most MAX_EVENTS times.
        owner = _owning_module(param)
        if owner is None:
            return None, {}
        name = next((n for n, p in owner.named_parameters() if p is param), None)
        return name, {"": owner}


def _owning_module(param: torch.Tensor) -> torch.nn.Module | None:
    modules = [o for o in gc.get_objects() if issubclass(type(o), torch.nn.Module)]
    children = {id(c) for m in modules for c in m._modules.values() if c is not None}
    for m in modules:
        if id(m) in children:
            continue
        if any(p is param for p in m.parameters()):
            return m
    return None


_watches: dict[int, _RequiresGradWatch] = {}


def watch_requires_grad(run: RunContext) -> _Handle:
    """Record failed `requires_grad=True` requests on non-float params into `run`'s timeline
    until the returned handle's `remove()`. One listener per run however often it is asked
    (the probe at attach, the zero-code session at the start of the script)."""
    watch = _watches.get(id(run))
    if watch is None or watch.run is not run:
        watch = _watches[id(run)] = _RequiresGradWatch(run)
        _requires_grad_patch.add_listener(watch)
    watch.refs += 1
    return _Handle(watch)

"""Ranking metrics the script computes itself: scikit-learn's and torchmetrics' functions.

`traindoctor.evaluate()` counts what a metric saw; scripts that call `roc_auc_score` or
torchmetrics' functional `auroc` directly get a number with no such check, and AUROC/AP of
targets that hold one class only has no value: scikit-learn raises (callers often substitute 0),
torchmetrics returns 0 with a warning. The functions are wrapped where they are defined (and
when their module is imported later, before the script binds the name): each call's targets
are checked with one min/max reduction, and a call on one-class targets is recorded as an
`eval.undefined` entry with the line that made it. The wrapper returns (or raises) exactly what
the function does.
"""

from __future__ import annotations

import functools
import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

import torch

from .._patching import Patch, acquire, release
from .._source import user_source
from .base import AttachContext, Probe, Recorder
from .metrics import EVAL_UNDEFINED

# module -> {function: (name of the targets argument, its position)}
SKLEARN = {"roc_auc_score": ("y_true", 0), "average_precision_score": ("y_true", 0)}
TORCHMETRICS = {
    "auroc": ("target", 1),
    "average_precision": ("target", 1),
    "binary_auroc": ("target", 1),
    "binary_average_precision": ("target", 1),
}
TARGETS: dict[str, dict[str, tuple[str, int]]] = {
    "sklearn.metrics": SKLEARN,
    "torchmetrics.functional": TORCHMETRICS,
    "torchmetrics.functional.classification": TORCHMETRICS,
}


# -- the shared wrappers (process-wide, one hold per listening probe) --------------------------
_listeners: list[MetricCallsProbe] = []
_metric_patches: dict[tuple[str, str], Patch] = {}  # (module name, function) -> its one Patch


def _metric_patch(module: ModuleType, attr: str, arg: str, pos: int) -> Patch:
    patch = _metric_patches.get((module.__name__, attr))
    if patch is None or patch.owner is not module:  # (a module imported afresh: a new owner)
        patch = Patch(module, attr, lambda fn: _wrap(fn, attr, arg, pos), optional=True)
        _metric_patches[(module.__name__, attr)] = patch
    return patch


def _wrap(fn: Callable[..., Any], name: str, arg: str, pos: int) -> Callable[..., Any] | None:
    if getattr(fn, "_traindoctor_metric", False):
        return None  # ours already (left under someone else's wrapper)

    @functools.wraps(fn)
    def metric(*args: Any, **kwargs: Any) -> Any:
        target = kwargs.get(arg, args[pos] if len(args) > pos else None)
        try:
            out = fn(*args, **kwargs)
        except BaseException:
            for probe in list(_listeners):
                probe._observe(name, target, kwargs, None)
            raise
        for probe in list(_listeners):
            probe._observe(name, target, kwargs, out)
        return out

    metric._traindoctor_metric = True  # type: ignore[attr-defined]
    return metric


class MetricCallsProbe(Probe):
    name = "metric_calls"
    provides: ClassVar[tuple[str, ...]] = ()  # writes eval.undefined, which MetricsProbe declares
    provides_facts: ClassVar[tuple[str, ...]] = ("metric_calls",)

    def __init__(self) -> None:
        super().__init__()
        self._held: list[Patch] = []
        self._finder: _PatchOnImport | None = None
        self._rec: Recorder | None = None

    def listen_early(self) -> None:
        """Zero-code mode: wrap before the script imports the functions by name."""
        self._install()

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec
        self._install()

    def detach(self) -> None:
        super().detach()
        if self._finder is not None and self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        self._finder = None
        if self in _listeners:
            _listeners.remove(self)
        for patch in reversed(self._held):
            release(patch)
        self._held.clear()

    def _install(self) -> None:
        if self._finder is not None:
            return
        _listeners.append(self)
        for name in TARGETS:
            module = sys.modules.get(name)
            if module is not None:
                self._patch(module)
        self._finder = _PatchOnImport(set(TARGETS), self._patch)
        sys.meta_path.insert(0, self._finder)

    def _patch(self, module: ModuleType) -> None:
        for attr, (arg, pos) in TARGETS.get(module.__name__, {}).items():
            patch = _metric_patch(module, attr, arg, pos)
            if patch in self._held:
                continue
            acquire(patch)
            self._held.append(patch)

    def _observe(self, name: str, target: Any, kwargs: dict[str, Any], out: Any) -> None:
        ctx = self.ctx
        if ctx is None or self.retired:
            return
        ctx.guard.call("probe metric_calls", self._record, name, target, kwargs, out)

    def _record(self, name: str, target: Any, kwargs: dict[str, Any], out: Any) -> None:
        task = kwargs.get("task")
        if name in ("auroc", "average_precision") and task not in (None, "binary"):
            return  # multiclass/multilabel: one class absent is a per-class question
        assert self.ctx is not None and self._rec is not None
        source = user_source(skip=2)
        label = f"{name} ({source})" if source else name
        calls = self._rec.timeline.facts.setdefault("metric_calls", {})
        calls[label] = calls.get(label, 0) + 1  # every call, for "undefined in k of n"
        span = _min_max(target)
        if span is None or span[0] != span[1]:
            return
        value = span[0]
        reason = (
            "no positive target"
            if value <= 0
            else "no negative target"
            if value == 1
            else "only one class in the targets"
        )
        raw = _as_float(out)
        self._rec.append(
            self.ctx.state.step,
            EVAL_UNDEFINED,
            {
                "metric": label,
                "class": None,
                "reason": reason,
                "counts": {"elements": _numel(target), "target_value": value},
                "raw": raw,
                "raised": out is None,
                "source": source,
            },
        )


def _min_max(target: Any) -> tuple[float, float] | None:
    """(min, max) of the targets, one host read; None when they are not numbers."""
    if isinstance(target, torch.Tensor):
        if target.numel() == 0:
            return None
        t = target.detach()
        lo, hi = torch.stack([t.min(), t.max()]).double().tolist()
        return lo, hi
    try:
        import numpy as np

        arr = np.asarray(target)
        if arr.size == 0 or arr.dtype.kind not in "biuf":
            return None
        return float(arr.min()), float(arr.max())
    except Exception:  # noqa: BLE001  (ragged lists, objects: not judged)
        return None


def _numel(target: Any) -> int | None:
    if isinstance(target, torch.Tensor):
        return int(target.numel())
    try:
        return len(target)
    except TypeError:
        return None


def _as_float(out: Any) -> float | None:
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        return float(out.detach().double().item())
    if isinstance(out, int | float):
        return float(out)
    return None


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches a target module right after it executes, before `from x import f` binds f."""

    def __init__(self, names: set[str], patch: Callable[[ModuleType], None]) -> None:
        self.names = names
        self.patch = patch
        self._busy = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.names or self._busy:
            return None
        self._busy = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader, self.patch)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            self._patch(module)
        except Exception:  # noqa: BLE001  (the import itself must succeed as it would)
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

"""What a scenario is: a plain training function plus what traindoctor must say about it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

# watch(model, optimizer[, scaler]) -> a doctor (or None): lets one scenario exercise both the
# plain-loop API (td.watch) and zero-code mode (watch=None, hooks installed from outside).
WatchFn = Callable[..., Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    bug: str  # the bug planted, in one line ("" for a healthy scenario)
    train: Callable[..., Any]  # train(steps=..., watch=None)
    expect: tuple[str, ...] = ()  # codes that must fire
    top: str | None = None  # the code expected first in the ranked findings
    # Expected location of the `top` finding: module, a param-name prefix every listed param
    # starts with, and a snippet of the source line it points to.
    where: dict[str, str] = field(default_factory=dict)
    twin: str | None = None  # the healthy scenario it mirrors
    steps: int = 60
    raises: type[BaseException] | None = None  # the script itself crashes (e.g. TD110)
    # Modes whose verdict is asserted: a rule fed by doc.log(parts=...) has nothing to read in
    # zero-code mode, where the script calls no traindoctor API.
    modes: tuple[str, ...] = ("zero-code", "watch")
    # Optional libraries train() imports (transformers, peft, bitsandbytes): skipped without.
    requires: tuple[str, ...] = ()
    # Run with the experiments on a copy (as under `traindoctor check`): the TD7xx scenarios.
    experiments: bool = False

    @property
    def healthy(self) -> bool:
        return not self.expect

    @property
    def missing(self) -> list[str]:
        """The libraries in `requires` that cannot be imported here."""
        import importlib.util

        return [r for r in self.requires if importlib.util.find_spec(r) is None]


def log(doc: Any, **values: Any) -> None:
    """doc.log(...) when a doctor is watching; nothing otherwise."""
    if doc is not None:
        doc.log(**values)


@contextlib.contextmanager
def validating(doc: Any, model: torch.nn.Module) -> Iterator[None]:
    """doc.validating(model) when watched, else the usual eval()+no_grad() by hand."""
    if doc is not None:
        with doc.validating(model):
            yield
        return
    was = model.training
    model.eval()
    with torch.no_grad():
        yield
    model.train(was)


def classification_data(n: int = 512, dim: int = 16, classes: int = 4, seed: int = 0):
    """A learnable synthetic task: labels from a fixed random linear map of the inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, classes, generator=g)
    y = (x @ w).argmax(dim=1)
    return x, y


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0):
    """Endless shuffled mini-batches from a fixed generator (no global RNG use)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i : i + batch]
            yield x[idx], y[idx]


def line_in(path: str, marker: str) -> str:
    """`FILE:LINE` of the first line of `path` that holds `marker` (lines that call a
    `line_of(` helper themselves excepted): where a scenario's finding must point."""
    with open(path, encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if marker in text and "line_of(" not in text:
                return f"{os.path.basename(path)}:{number}"
    raise LookupError(f"no line holding {marker!r} in {path}")

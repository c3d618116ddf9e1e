"""What rules know about optimizer classes (the `optimizers` fact's `class`)."""

from __future__ import annotations

from typing import Any

# Optimizers whose update does not change when every gradient is multiplied by a constant
# (up to eps): their step size is set by the lr, not by the gradient's size.
SCALE_INVARIANT = frozenset(
    {
        "Adam",
        "AdamW",
        "Adamax",
        "NAdam",
        "RAdam",
        "Adagrad",
        "Adadelta",
        "RMSprop",
        "Adafactor",
        "SparseAdam",
        "Lion",
    }
)


def classes_stepping(optimizers: list[dict[str, Any]] | None, params: tuple[str, ...]) -> set:
    """The classes of the optimizers whose groups hold any of `params`."""
    wanted = set(params)
    return {
        opt.get("class")
        for opt in optimizers or ()
        for group in opt.get("groups") or ()
        if wanted.intersection(group.get("params") or ())
    }
